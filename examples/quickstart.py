"""Quickstart: run functions in an environment holding a package the caller
doesn't have.

`humanize` is installed into an isolated environment (built once with uv,
then found again in the store), and `EnvExecutor` runs the functions there,
exactly as `ProcessPoolExecutor` would run them here. Run it twice: the
second time nothing is built.
"""

import time

import bayou


def describe(size: int) -> str:
    import humanize  # only the environment has it

    return f"{size} bytes is {humanize.naturalsize(size)}"


def where() -> str:
    import sys

    return sys.prefix


if __name__ == "__main__":
    env = bayou.Env(pip=["humanize==4.9.0"], name="quickstart")

    started = time.perf_counter()
    environment = bayou.provision(env)
    print(f"environment {env.hash[:8]} ready in {time.perf_counter() - started:.2f} s")

    with bayou.EnvExecutor(2, env=env) as executor:
        print(f"workers run in {executor.submit(where).result()}")
        for line in executor.map(describe, [1_000, 3_500_000, 7_200_000_000]):
            print(line)

    try:
        import humanize  # noqa: F401
    except ImportError:
        print("...and the caller still doesn't have humanize.")
