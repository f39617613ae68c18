"""joblib.Parallel in an isolated environment: one line of configuration, same code.

`packaging` 21.3 still parses any string (falling back to a `LegacyVersion`); recent
releases reject what isn't PEP 440. The batches run in a pip environment holding
packaging 21.3, while the caller keeps whatever packaging it has. The environment has no
joblib: joblib's batches are unpacked here, only `classify` and its arguments travel.
Run it twice: the second time the environment is found in the store.
"""

import importlib.metadata
import time

from joblib import Parallel, delayed, parallel_config

import bayou
import bayou.joblib  # noqa: F401  (registers the "bayou" joblib backend)


def classify(text: str) -> str:
    import packaging
    from packaging.version import parse

    return f"{text!r:20} -> {type(parse(text)).__name__} (packaging {packaging.__version__})"


if __name__ == "__main__":
    env = bayou.Env(pip=["packaging==21.3"], name="joblib-example")
    texts = ["1.0", "3.12.0rc1", "1.0.post1", "2024.1-final-ish", "not a version"]

    started = time.perf_counter()
    with parallel_config(backend="bayou", env=env, n_jobs=2):
        for line in Parallel()(delayed(classify)(text) for text in texts):
            print(line)
    print(f"{len(texts)} calls in {time.perf_counter() - started:.2f} s (environment included)")
    print(f"...and the caller has packaging {importlib.metadata.version('packaging')}.")
