"""Two environments with conflicting pins, used side by side in one program.

packaging 21.3 still parses any string (falling back to a LegacyVersion);
packaging 24.1 rejects what isn't PEP 440. Both run concurrently, each in its
own environment, while the caller keeps whatever packaging it has.
"""

from concurrent.futures import as_completed

import bayou


def parse(text: str) -> str:
    import packaging
    import packaging.version

    try:
        result = repr(packaging.version.parse(text))
    except packaging.version.InvalidVersion as exc:
        result = f"InvalidVersion: {exc}"
    return f"packaging {packaging.__version__}: {result}"


if __name__ == "__main__":
    old = bayou.Env(pip=["packaging==21.3"], name="packaging-old")
    new = bayou.Env(pip=["packaging==24.1"], name="packaging-new")

    with bayou.EnvExecutor(1, env=old) as on_old, bayou.EnvExecutor(1, env=new) as on_new:
        futures = [ex.submit(parse, "2024.1-final-ish") for ex in (on_old, on_new)]
        for future in as_completed(futures):
            print(future.result())
