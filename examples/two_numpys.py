"""One image, two numpys: an old and a current scikit-image segment it side by side.

A pipeline validated years ago on Python 3.9, numpy 1.23 and scikit-image
0.19 meets the current stack (Python 3.12, numpy 2). Both run at once, each
in its own environment, while the caller has numpy 2 and no scikit-image at
all. The image goes to both and the label arrays come back as ordinary numpy
arrays, so the caller can check that upgrading changed nothing.
"""

import numpy as np

import bayou

# At the top level on purpose: a worker of another Python imports this script to
# find `Segmenter` (as multiprocessing's spawn does), and there `bayou` is an
# inert stand-in, so these lines cost nothing in the workers.
OLD = bayou.Env(python="3.9", pip=["numpy==1.23.5", "scikit-image==0.19.3"], name="skimage-old")
NEW = bayou.Env(python="3.12", pip=["numpy==2.4.6", "scikit-image==0.26.0"], name="skimage-new")


def versions() -> str:
    import skimage  # only the envs have it: import it where the work runs

    return f"numpy {np.__version__} / scikit-image {skimage.__version__}"


class Segmenter:
    """Parameters chosen in the caller; the bound method `run` travels by reference
    (class name + the instance's attributes), so it works in any Python version."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def run(self, image):
        from skimage import filters, measure

        smooth = filters.gaussian(image, sigma=self.sigma)
        labels = measure.label(smooth > filters.threshold_otsu(smooth))
        areas = [region.area for region in measure.regionprops(labels)]
        return labels, areas


def synthetic_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """Five bright disks on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size))
    for y, x, r in [(50, 60, 20), (60, 180, 25), (140, 110, 15), (200, 50, 18), (200, 200, 22)]:
        image[(yy - y) ** 2 + (xx - x) ** 2 < r**2] = 1.0
    return image + rng.normal(0.0, 0.4, image.shape)


if __name__ == "__main__":
    image = synthetic_image()
    segmenter = Segmenter(sigma=2.0)

    with bayou.EnvExecutor(1, env=OLD) as on_old, bayou.EnvExecutor(1, env=NEW) as on_new:
        # Submit to both before waiting for either: the two envs work at once.
        submitted = [
            (ex.submit(versions), ex.submit(segmenter.run, image)) for ex in (on_old, on_new)
        ]
        label_images = []
        for name, segmentation in submitted:
            labels, areas = segmentation.result()  # the caller's numpy 2 arrays, whoever made them
            print(f"{name.result()}: {labels.max()} objects, areas {sorted(map(int, areas))} px")
            label_images.append(labels)

    old, new = label_images
    same = np.mean((old > 0) == (new > 0))  # masks, not label numbers: those may be renumbered
    if old.max() == new.max() and same > 0.99:
        print(f"the two segmentations agree ({same:.2%} of pixels)")
    else:
        print(f"the two segmentations differ: {old.max()} vs {new.max()} objects, {same:.2%}")
