"""bayou.dask's pieces that need no cluster: task rewriting, naming, the plugin's pickling,
argument checks and the distributed version gate.

`route` is checked on real dask task specs (as dask builds them for delayed,
fused arrays and bags) with a runner that records which calls it was asked
to make; the end-to-end path through a real EnvExecutor is in
tests/test_dask_plugin.py and integrations/dask/.
"""

from __future__ import annotations

import functools
import operator
import pickle

import cloudpickle
import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from dask._task_spec import DataNode, List, Task, TaskRef  # noqa: E402

import bayou  # noqa: E402
import bayou.dask  # noqa: E402
from bayou.dask import _compat  # noqa: E402
from bayou.dask.routing import EnvCall, is_plumbing, route  # noqa: E402


def double(x):
    return 2 * x


def add(x, y=0):
    return x + y


class Recorder:
    """A runner that makes the call locally and remembers which function it got."""

    def __init__(self):
        self.calls = []

    def __call__(self, fn, args, kwargs):
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return fn(*args, **kwargs)


def test_user_function_is_routed_and_arguments_resolved_in_the_caller():
    task = Task("k", add, TaskRef("a"), y=List(TaskRef("b"), 1))
    rec = Recorder()
    routed = route(task, rec)
    assert isinstance(routed.func, EnvCall) and routed.func.fn is add
    assert task.func is add, "the worker's own run_spec must not be mutated"
    with pytest.raises(TypeError):  # List resolved to a list, then added to an int
        routed({"a": 1, "b": 2})
    assert rec.calls == ["add"]
    assert route(Task("k", add, TaskRef("a"), y=3), rec)({"a": 4}) == 7


def test_plumbing_stays_on_the_worker_and_untouched_nodes_are_kept():
    task = Task("k", operator.getitem, TaskRef("a"), 0)
    rec = Recorder()
    assert route(task, rec) is task
    assert route(task, rec)({"a": [5]}) == 5
    assert rec.calls == []
    data = DataNode("d", 3)
    assert route(data, rec) is data
    assert is_plumbing(functools.partial(dask.utils.apply, double))
    assert not is_plumbing(functools.partial(double, 1))
    assert not is_plumbing(double)


def test_user_callable_passed_to_plumbing_is_routed_but_classes_are_not():
    from dask.utils import apply

    task = Task("k", apply, double, List(TaskRef("a")))
    rec = Recorder()
    assert route(task, rec)({"a": 21}) == 42
    assert rec.calls == ["double"]
    made = Task("k", apply, dict, List(), {"x": TaskRef("a")})
    assert route(made, rec) is made


def test_fused_array_blocks_route_each_user_function():
    with dask.config.set({"optimization.fuse.active": True}):
        x = da.ones(4, chunks=2).map_blocks(double).map_blocks(add, y=1)
        (opt,) = dask.optimize(x)
    graph = dict(opt.__dask_graph__())
    rec = Recorder()
    results = [route(node, rec)({}) for node in graph.values() if not node.dependencies]
    assert [list(r) for r in results] == [[3.0, 3.0], [3.0, 3.0]]
    assert sorted(rec.calls) == ["add", "add", "double", "double"]


def test_env_route_kwargs_annotations_and_names():
    env = bayou.Env(pip=["packaging==21.3"], name="old")
    route_ = bayou.dask.env(env, retries=2)
    assert dict(route_) == {"resources": {"bayou:old": 1}, "retries": 2}
    assert route_.annotations["executor"] == "bayou:old"
    with route_:
        assert dask.get_annotations()["resources"] == {"bayou:old": 1}
        assert dask.config.get("optimization.fuse.active") is False
    assert "resources" not in dask.get_annotations()
    unnamed = bayou.Env(pip=["packaging==21.3"])
    assert bayou.dask.env(unnamed).key == unnamed.hash
    assert bayou.dask.env("bayou:old").key == "old"
    plugin = bayou.dask.EnvPlugin(unnamed, name="mine")
    assert bayou.dask.env(plugin).resource == "bayou:mine"


def test_bad_arguments_name_the_culprit():
    env = bayou.Env(pip=["packaging==21.3"], name="old")
    with pytest.raises(TypeError, match="got int"):
        bayou.dask.env(3)
    with pytest.raises(ValueError, match="retries"):
        bayou.dask.env(env, retries=-1)
    with pytest.raises(ValueError, match="max_workers"):
        bayou.dask.EnvPlugin(env, max_workers=0)
    with pytest.raises(TypeError, match="heartbeat_timout"):
        bayou.dask.EnvPlugin(env, heartbeat_timout=3)
    with pytest.raises(TypeError, match="bayou.Env"):
        bayou.dask.EnvPlugin("old")


def test_plugin_travels_to_workers_with_its_env():
    env = bayou.Env(pip=["packaging==21.3"], name="old", env_vars={"A": "1"})
    plugin = bayou.dask.EnvPlugin(env, max_workers=2, task_timeout=30)
    copy = pickle.loads(cloudpickle.dumps(plugin))
    assert copy.env.hash == env.hash and dict(copy.env.env_vars) == {"A": "1"}
    assert (copy.name, copy.resource, copy.max_workers) == ("bayou-env-old", "bayou:old", 2)
    assert copy.executor_options == {"task_timeout": 30}


def test_older_distributed_is_refused_with_the_minimum(monkeypatch):
    import distributed

    monkeypatch.setattr(distributed, "__version__", "2024.8.0")
    with pytest.raises(_compat.UnsupportedDistributedError, match=r">= 2025\.1\.0.*2024\.8\.0"):
        _compat.check_distributed()
    monkeypatch.undo()
    assert _compat.check_distributed() == distributed.__version__
