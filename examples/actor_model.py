"""An actor: a "model" that is slow to build and fast to call, in an env of another Python.

The model needs Python 3.9 and numpy 1.x (an old pipeline, say); the caller
runs a current Python with numpy 2. `ex.actor(Model, ...)` builds one Model in
a worker process of that env and keeps it: loading happens once, and every
call after that is a millisecond-scale round trip that returns a future.
If the process dies, `max_restarts=1` builds the model again, once.
"""

import statistics
import time

import numpy as np

import bayou

# At the top level on purpose: a worker of another Python imports this script to
# find `Model` (as multiprocessing's spawn does); there `bayou` is an inert
# stand-in, so this line costs nothing in the worker.
ENV = bayou.Env(python="3.9", pip=["numpy==1.23.5"], name="actor-model-py39")


class Model:
    """Built once in the env: the two seconds stand for loading weights from disk."""

    def __init__(self, size: int, seed: int = 0) -> None:
        import numpy

        time.sleep(2.0)
        self.weights = numpy.random.default_rng(seed).standard_normal((size, size))
        self.calls = 0

    def predict(self, x):
        self.calls += 1
        return self.weights @ x

    def describe(self) -> str:
        import sys

        import numpy

        python = ".".join(map(str, sys.version_info[:2]))
        return f"Python {python}, numpy {numpy.__version__}, {self.calls} calls served"


if __name__ == "__main__":
    with bayou.EnvExecutor(1, env=ENV) as ex:
        start = time.perf_counter()
        model = ex.actor(Model, args=(256,), kwargs={"seed": 42}, max_restarts=1)
        x = np.ones(256)
        first = model.predict(x).result()  # waits for the model to be built
        print(f"built and first call: {time.perf_counter() - start:.1f} s")

        times = []
        for _ in range(200):
            t = time.perf_counter()
            y = model.predict(x).result()
            times.append(time.perf_counter() - t)
        print(f"warm call: median {statistics.median(times) * 1000:.2f} ms")

        futures = [model.predict(x * k) for k in range(1, 6)]  # queued, run in order
        scaled = [f.result() for f in futures]
        same = np.allclose(scaled[4], 5 * first) and np.allclose(y, first)
        print("results agree with the first call:", same)
        print("the model runs on", model.describe().result())
        print(f"the caller runs numpy {np.__version__}")
