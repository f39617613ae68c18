"""Quickstart: compute something with a package the caller doesn't have.

`packaging==21.3` is installed into an isolated environment (built once with
uv, then found again in the store); the computation runs there. Run it twice:
the second time nothing is built.
"""

import time

import bayou

env = bayou.Env(pip=["packaging==21.3"], name="quickstart")

started = time.perf_counter()
environment = bayou.provision(env)
print(f"environment {env.hash[:8]} ready in {time.perf_counter() - started:.2f} s")
print(f"  prefix: {environment.prefix}")

result = bayou.run(
    env,
    [
        "python",
        "-c",
        "import packaging.version as v; print(v.parse('1.0.0rc1') < v.parse('1.0.0'))",
    ],
)
print(f"computed inside the env (packaging 21.3): 1.0.0rc1 < 1.0.0 is {result.stdout.strip()}")
