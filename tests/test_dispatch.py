"""The pool's rules, driven without processes: `bayou.pool.dispatch` with plain records,
real `concurrent.futures.Future`s and a clock that is just a number.

Each test states one rule; changing the rule in dispatch.py fails it."""

from __future__ import annotations

import signal
from concurrent.futures import Future

import pytest

from bayou import errors
from bayou.pool import dispatch
from bayou.pool.dispatch import Dispatch, Limits, Phase, Worker


class Item:
    """What dispatch needs of a work item."""

    _ids = iter(range(1, 10**9))

    def __init__(self) -> None:
        self.task_id = next(self._ids)
        self.future: Future = Future()
        self.started = False
        self.stop_requested = False
        self.cancel_requested = False
        self.attempts = 0
        self.undelivered = False
        self.spin_after = False
        self.lease = None  # a lent worker's item has one (`lending`)
        self.worker = None
        self.released = self.requeues = 0

    def release(self) -> None:
        self.released += 1

    def requeued(self) -> None:
        self.requeues += 1


def pool(max_workers=2, **limits) -> Dispatch:
    return Dispatch(Limits(max_workers=max_workers, **limits))


def ready_workers(d: Dispatch, n: int, now: float = 0.0) -> list[Worker]:
    workers = []
    for i in range(n):
        w = Worker(slot=i, worker_id=i + 1, started_at=now)
        d.spawned(w)
        d.ready_worker(w, now)
        workers.append(w)
    return workers


def no_memory(w):
    return 0


def nothing_waiting(w):
    return False


# -- scheduling -------------------------------------------------------------------------


def test_prefetch_hands_over_at_most_max_workers_times_one_plus_prefetch():
    d = pool(max_workers=2)
    items = [Item() for _ in range(10)]
    plans = [d.submit(item, 0.0) for item in items]
    window = 2 * (1 + dispatch.PREFETCH)
    # no worker yet: the first `window` are handed over (RUNNING), the rest stay pending
    assert [i.future.running() for i in items] == [True] * window + [False] * (10 - window)
    assert len(d.ready) == window and len(d.pending) == 10 - window
    assert all(p.spawn for p in plans[:2])  # tasks wait and fewer than max_workers live
    w1, w2 = ready_workers(d, 2)
    assert (w1.phase, w2.phase) == (Phase.BUSY, Phase.BUSY)
    # two on workers, two next in line: still `window` handed over
    assert sum(i.future.running() for i in items) == window


def test_a_burst_is_scheduled_once_in_order_as_the_same_calls_one_by_one():
    one_by_one, burst = pool(max_workers=2), pool(max_workers=2)
    ready_workers(one_by_one, 2)
    workers = ready_workers(burst, 2)
    singles, many = [Item() for _ in range(9)], [Item() for _ in range(9)]
    sends = [s for item in singles for s in one_by_one.submit(item, 0.0).sends]
    plan = burst.submit_many(many, 0.0)
    # the idle workers get the first two, in order, from the one plan
    assert [i for _, i in plan.sends] == many[:2]
    assert {w for w, _ in plan.sends} == set(workers)
    assert [i for _, i in sends] == singles[:2] and not plan.spawn
    assert [i.future.running() for i in many] == [i.future.running() for i in singles]
    assert list(burst.pending) == many[4:] and list(burst.ready) == many[2:4]


def test_a_worker_that_answers_takes_the_next_task_and_the_window_moves():
    d = pool(max_workers=1)
    items = [Item() for _ in range(4)]
    for item in items:
        d.submit(item, 0.0)
    (w,) = ready_workers(d, 1)
    assert w.item is items[0]
    retire, plan = d.result(w, 1.0, over_memory=False)
    assert not retire and plan.sends == [(w, items[1])]
    assert items[2].future.running() and not items[3].future.running()


def test_a_future_cancelled_while_pending_is_skipped_and_released():
    d = pool(max_workers=1)
    items = [Item() for _ in range(4)]
    for item in items:
        d.submit(item, 0.0)
    assert items[3].future.cancel()  # still pending: the user may cancel it
    (w,) = ready_workers(d, 1)
    for _ in range(3):
        d.result(w, 1.0, over_memory=False)
    assert items[3].released == 1 and items[3] not in d.ready


def test_spawn_only_while_tasks_outnumber_idle_and_starting_workers():
    d = pool(max_workers=3)
    assert d.submit(Item(), 0.0).spawn
    d.spawned(Worker(slot=0, worker_id=1, started_at=0.0))
    assert not d._spawn_needed()  # one task, one starting worker
    assert d.submit(Item(), 0.0).spawn


def test_tasks_coming_back_to_back_ask_the_worker_to_poll():
    d = pool(max_workers=1, spin=100e-6)
    (w,) = ready_workers(d, 1)
    first = Item()
    d.submit(first, 0.0)
    assert not first.spin_after  # its worker never answered before
    d.result(w, 1.0, over_memory=False)
    soon, late = Item(), Item()
    d.submit(soon, 1.0 + 50e-6)
    assert soon.spin_after
    d.result(w, 2.0, over_memory=False)
    d.submit(late, 2.5)
    assert not late.spin_after


def test_workers_do_not_poll_while_tasks_wait_in_the_queue():
    d = pool(max_workers=1, spin=100e-6)
    (w,) = ready_workers(d, 1)
    window = 1 + dispatch.PREFETCH
    items = [Item() for _ in range(window + 2)]
    d.submit_many(items, 0.0)
    now = 0.0
    for item in items[1:]:  # each next one is handed over right after a result
        now += 10e-6
        d.result(w, now, over_memory=False)
        # more work queued beyond the window: a map's; polling would only take CPU
        assert item.spin_after is (not d.pending)
    assert items[-1].spin_after and not items[1].spin_after


# -- retiring -----------------------------------------------------------------------------


def test_max_tasks_per_child_retires_the_worker_after_its_last_task():
    d = pool(max_workers=1, max_tasks_per_child=2)
    (w,) = ready_workers(d, 1)
    d.submit(Item(), 0.0)
    assert d.result(w, 1.0, over_memory=False)[0] is False
    d.submit(Item(), 1.0)
    retire, plan = d.result(w, 2.0, over_memory=False)
    assert retire and w.phase is Phase.RETIRING and w not in d.idle
    d.submit(Item(), 2.0)
    assert d._spawn_needed()  # a retiring worker does not count


def test_a_worker_over_the_memory_cap_after_its_task_is_retired():
    d = pool(max_workers=1, max_memory=100)
    (w,) = ready_workers(d, 1)
    d.submit(Item(), 0.0)
    assert d.result(w, 1.0, over_memory=True)[0] is True


# -- deaths ---------------------------------------------------------------------------------


def crash(item):
    return errors.WorkerCrashedError("crashed"), True


def timed_out(item):
    return errors.TaskTimeoutError("too long"), False


def test_a_crash_is_retried_while_retries_allow_then_fails():
    d = pool(max_workers=1, retries=2)
    item = Item()
    d.submit(item, 0.0)
    for attempt in (1, 2):
        (w,) = ready_workers(d, 1)
        assert w.item is item
        end = d.exited(w, -signal.SIGSEGV, 1.0, crash)
        assert end.fate == "retried" and item.attempts == attempt and item.requeues == attempt
        assert end.plan.spawn  # a replacement for the retry
    (w,) = ready_workers(d, 1)
    end = d.exited(w, -signal.SIGSEGV, 1.0, crash)
    assert end.fate == "failed" and isinstance(end.error, errors.WorkerCrashedError)


def test_errors_that_forbid_a_retry_fail_at_once():
    d = pool(max_workers=1, retries=5)
    item = Item()
    d.submit(item, 0.0)
    (w,) = ready_workers(d, 1)
    assert d.exited(w, -signal.SIGKILL, 1.0, timed_out).fate == "failed"


def test_an_undelivered_task_goes_back_without_spending_an_attempt():
    d = pool(max_workers=1, retries=0)
    item = Item()
    d.submit(item, 0.0)
    (w,) = ready_workers(d, 1)
    item.undelivered = True  # its TASK frame never reached the worker
    end = d.exited(w, 0, 1.0, crash)
    assert end.fate == "requeued" and item.attempts == 0 and d.ready[0] is item


def test_a_task_being_cancelled_ends_cancelled_when_its_worker_dies():
    d = pool(max_workers=1)
    item = Item()
    d.submit(item, 0.0)
    (w,) = ready_workers(d, 1)
    assert d.cancel(item, 1.0, grace=0.5) is w
    assert d.exited(w, -signal.SIGKILL, 2.0, crash).fate == "cancelled"


def start_death(d: Dispatch, rc: int, killed_by_us: bool = False):
    w = Worker(slot=0, worker_id=99, started_at=0.0)
    d.spawned(w)
    if killed_by_us:
        w.kill_reason = (errors.WorkerCrashedError, "did not start in time")
    return d.exited(w, rc, 1.0, crash)


def test_three_workers_dying_before_ready_break_the_pool():
    d = pool()
    d.submit(Item(), 0.0)
    assert not start_death(d, 1).start_failed
    assert not start_death(d, 1).start_failed
    end = start_death(d, 1)
    assert end.start_failed and not end.plan.spawn


def test_outside_kills_before_ready_are_tolerated_twelve_times():
    d = pool()
    for _ in range(dispatch.MAX_START_KILLS - 1):
        assert not start_death(d, -signal.SIGKILL).start_failed
    assert start_death(d, -signal.SIGKILL).start_failed


def test_a_ready_worker_resets_the_start_failure_count():
    d = pool()
    start_death(d, 1)
    start_death(d, 1)
    ready_workers(d, 1)
    assert not start_death(d, 1).start_failed


def test_a_worker_we_killed_before_ready_is_not_a_start_failure():
    d = pool()
    for _ in range(5):
        assert not start_death(d, -signal.SIGKILL, killed_by_us=True).start_failed


# -- an actor's pool: restarts and a worker kept alive --------------------------------------


def test_min_workers_spawns_without_work_and_again_after_a_death():
    d = pool(max_workers=1, min_workers=1, max_restarts=3)
    assert d._spawn_needed()  # nothing submitted: built at once
    (w,) = ready_workers(d, 1)
    assert not d._spawn_needed()
    end = d.exited(w, -signal.SIGKILL, 1.0, crash)  # died idle
    assert end.plan.spawn and not end.out_of_restarts and d.deaths == 1


def test_every_death_counts_against_max_restarts_and_the_next_one_breaks():
    d = pool(max_workers=1, min_workers=1, max_restarts=2)
    first, second = Item(), Item()
    d.submit(first, 0.0)
    d.submit(second, 0.0)
    (w,) = ready_workers(d, 1)
    end = d.exited(w, -signal.SIGSEGV, 1.0, crash)  # a call in flight: it fails, no retry
    assert end.fate == "failed" and end.item is first and not end.out_of_restarts
    end = start_death(d, 1)  # the rebuild crashed before READY: counts too
    assert not end.out_of_restarts and d.deaths == 2
    (w,) = ready_workers(d, 1)
    assert w.item is second
    end = d.exited(w, -signal.SIGKILL, 2.0, crash)
    assert end.out_of_restarts and not end.plan.spawn and d.deaths == 3


def test_max_restarts_zero_breaks_at_the_first_death():
    d = pool(max_workers=1, min_workers=1, max_restarts=0)
    (w,) = ready_workers(d, 1)
    assert d.exited(w, -signal.SIGKILL, 1.0, crash).out_of_restarts


def test_workers_stopped_at_shutdown_and_task_pools_count_no_deaths():
    d = pool(max_workers=1, min_workers=1, max_restarts=0)
    (w,) = ready_workers(d, 1)
    d.shutdown(False, 1.0)
    assert not d._spawn_needed()  # no rebuild while shutting down
    to_stop, _ = d.finish(1.0)
    assert to_stop == [w]
    assert not d.exited(w, 0, 2.0, crash).out_of_restarts and d.deaths == 0
    plain = pool(max_workers=1)  # no max_restarts: deaths are only replaced
    (w,) = ready_workers(plain, 1)
    assert not plain.exited(w, -signal.SIGKILL, 1.0, crash).out_of_restarts


def test_a_death_while_shutdown_waits_for_queued_calls_counts():
    d = pool(max_workers=1, min_workers=1, max_restarts=0)
    running, queued = Item(), Item()
    d.submit(running, 0.0)
    d.submit(queued, 0.0)
    (w,) = ready_workers(d, 1)
    d.shutdown(False, 1.0)  # waits for both calls
    end = d.exited(w, -signal.SIGKILL, 2.0, crash)
    assert end.fate == "failed" and end.out_of_restarts and not end.plan.spawn
    assert d.deaths == 1


def test_outside_kills_of_an_actor_being_built_count_only_as_restarts():
    d = pool(max_workers=1, min_workers=1, max_restarts=100)
    for _ in range(dispatch.MAX_START_KILLS + 5):
        end = start_death(d, -signal.SIGKILL)
        assert not end.start_failed and not end.out_of_restarts
    for _ in range(dispatch.MAX_START_FAILURES - 1):  # it exits by itself: deterministic
        assert not start_death(d, 1).start_failed
    assert start_death(d, 1).start_failed


def test_served_counts_answers_over_all_workers():
    d = pool(max_workers=1, min_workers=1, max_restarts=1)
    (w,) = ready_workers(d, 1)
    for _ in range(3):
        d.submit(Item(), 0.0)
        d.result(w, 1.0, over_memory=False)
    d.exited(w, -signal.SIGKILL, 1.0, crash)
    (w,) = ready_workers(d, 1)
    d.submit(Item(), 2.0)
    d.result(w, 2.0, over_memory=False)
    assert d.served == 4


# -- cancel and shutdown --------------------------------------------------------------------


def test_cancel_drops_a_queued_task_and_asks_a_running_one_with_a_grace():
    d = pool(max_workers=1)
    running, queued = Item(), Item()
    d.submit(running, 0.0)
    d.submit(queued, 0.0)
    (w,) = ready_workers(d, 1)
    assert d.cancel(queued, 1.0, grace=5.0) == "dropped"
    assert d.cancel(running, 1.0, grace=2.0) is w
    assert running.cancel_requested and w.cancel_deadline == 3.0
    kills, _ = d.timers(2.9, no_memory, nothing_waiting)
    assert kills == []
    kills, _ = d.timers(3.0, no_memory, nothing_waiting)
    assert kills == [(w, dispatch.QUIET)]  # the grace ran out: killed, failing no task


def test_cancel_without_grace_kills_at_the_next_look():
    d = pool(max_workers=1)
    item = Item()
    d.submit(item, 0.0)
    (w,) = ready_workers(d, 1)
    d.cancel(item, 1.0, grace=0)
    assert d.timers(1.0, no_memory, nothing_waiting)[0] == [(w, dispatch.QUIET)]


def test_a_worker_being_killed_gets_no_next_task_even_if_its_answer_comes_first():
    d = pool(max_workers=1)
    cancelled, following = Item(), Item()
    d.submit_many([cancelled, following], 0.0)
    (w,) = ready_workers(d, 1)
    d.cancel(cancelled, 1.0, grace=0)
    ((killed, _),) = d.timers(1.0, no_memory, nothing_waiting)[0]
    killed.kill_reason = dispatch.QUIET  # the supervisor sends SIGKILL ...
    # ... but the task had answered just before: the worker must not take the next one
    retire, plan = d.result(w, 1.001, over_memory=False)
    assert retire and plan.sends == [] and w.phase is Phase.RETIRING
    assert following.worker is None and following in d.ready


def test_cancel_of_a_finished_task_is_too_late():
    d = pool(max_workers=1)
    item = Item()
    d.submit(item, 0.0)
    item.future.set_result(1)
    assert d.cancel(item, 1.0, grace=1.0) == "done"


def test_shutdown_cancel_futures_cancels_pending_and_stops_handed_over_tasks():
    d = pool(max_workers=1)
    items = [Item() for _ in range(5)]
    for item in items:
        d.submit(item, 0.0)
    (w,) = ready_workers(d, 1)
    cancelled, notify = d.shutdown(cancel_futures=True, now=10.0)
    handed_over = 1 + dispatch.PREFETCH
    assert cancelled == items[handed_over:]  # never handed over: cancelled
    assert notify == [(w, items[0].task_id)]  # running: asked to stop
    assert all(i.stop_requested for i in items[:handed_over])
    assert w.cancel_deadline == 10.0 + dispatch.SHUTDOWN_GRACE
    # the one next in line gets its grace when it reaches a worker
    d.result(w, 10.5, over_memory=False)
    assert w.item is items[1] and w.cancel_deadline == 10.5 + dispatch.SHUTDOWN_GRACE


def test_shutdown_without_cancel_lets_work_finish_then_stops_idle_workers():
    d = pool(max_workers=2)
    item = Item()
    d.submit(item, 0.0)
    w1, w2 = ready_workers(d, 2)
    assert d.shutdown(cancel_futures=False, now=1.0) == ([], [])
    assert d.finish(1.0) == ([], False)  # a task still runs
    d.result(w1, 2.0, over_memory=False)
    to_stop, gone = d.finish(2.0)
    assert set(to_stop) == {w1, w2} and not gone
    assert all(w.phase is Phase.RETIRING for w in to_stop)


def test_a_broken_pool_fails_what_is_queued_and_kills_its_workers():
    d = pool(max_workers=1)
    items = [Item() for _ in range(3)]
    for item in items:
        d.submit(item, 0.0)
    (w,) = ready_workers(d, 1)
    failed, workers = d.break_pool("initializer failed")
    assert failed == items[1:] and workers == [w]
    assert d.break_pool("again") == ([], [])
    assert not d.submit(Item(), 1.0).spawn  # a broken pool starts nothing


# -- deadlines -------------------------------------------------------------------------------


def test_task_timeout_kills_the_worker_with_its_reason():
    d = pool(max_workers=1, task_timeout=5.0, heartbeat_timeout=None)
    d.submit(Item(), 0.0)
    (w,) = ready_workers(d, 1)
    kills, nearest = d.timers(4.0, no_memory, nothing_waiting)
    assert kills == [] and nearest == pytest.approx(4.0 + dispatch.MAX_SELECT)
    kills, _ = d.timers(5.5, no_memory, nothing_waiting)
    assert [(k, r[0]) for k, r in kills] == [(w, errors.TaskTimeoutError)]
    assert "task_timeout=5.0" in kills[0][1][1]


def test_heartbeat_loss_kills_a_silent_worker_as_hung():
    d = pool(max_workers=1, heartbeat_timeout=2.0)
    (w,) = ready_workers(d, 1)
    w.last_seen = 10.0
    assert d.timers(11.8, no_memory, nothing_waiting) == ([], 12.0)  # the next look
    kills, _ = d.timers(12.5, no_memory, nothing_waiting)
    assert kills[0][0] is w and kills[0][1][0] is errors.WorkerHungError
    assert "no heartbeat for 2.5 s" in kills[0][1][1]


def test_a_lent_worker_answers_to_the_memory_cap_but_not_to_heartbeat_or_task_timeout():
    # lent to a persistent pool's client (`lending`): the client reads it, so the
    # pool sees no heartbeat, and hands back any call that runs long
    d = pool(max_workers=1, heartbeat_timeout=2.0, task_timeout=5.0, max_memory=1000)
    lease = Item()
    lease.lease = object()
    d.submit(lease, 0.0)
    (w,) = ready_workers(d, 1)
    assert w.item is lease and w.phase is Phase.BUSY
    kills, _ = d.timers(100.0, no_memory, nothing_waiting)
    assert kills == []
    d.timers(100.0 + dispatch.MEMORY_CHECK_INTERVAL, lambda w: 5000, nothing_waiting)
    kills, _ = d.timers(
        100.0 + 3 * dispatch.MEMORY_CHECK_INTERVAL, lambda w: 5000, nothing_waiting
    )
    assert [(k, r[0]) for k, r in kills] == [(w, errors.MemoryLimitError)]
    # given back (as if it answered), it is an ordinary worker again
    d2 = pool(max_workers=1, heartbeat_timeout=2.0, task_timeout=5.0)
    lease = Item()
    lease.lease = object()
    d2.submit(lease, 0.0)
    (w,) = ready_workers(d2, 1)
    d2.result(w, 50.0, over_memory=False)
    d2.submit(Item(), 50.0)
    kills, _ = d2.timers(56.0, no_memory, nothing_waiting)
    assert [r[0] for _, r in kills] == [errors.WorkerHungError]


def test_a_worker_that_does_not_start_in_time_is_killed():
    d = pool(max_workers=1, start_timeout=30.0)
    w = Worker(slot=0, worker_id=1, started_at=0.0)
    d.spawned(w)
    assert d.timers(29.7, no_memory, nothing_waiting) == ([], 30.0)
    assert d.timers(31.0, no_memory, nothing_waiting)[0][0][0] is w


def test_a_retired_worker_that_does_not_leave_is_killed_quietly():
    d = pool(max_workers=1, max_tasks_per_child=1, heartbeat_timeout=None)
    d.submit(Item(), 0.0)
    (w,) = ready_workers(d, 1)
    d.result(w, 1.0, over_memory=False)
    assert d.timers(1.0 + dispatch.RETIRE_TIMEOUT, no_memory, nothing_waiting)[0] == []
    kills, _ = d.timers(1.1 + dispatch.RETIRE_TIMEOUT, no_memory, nothing_waiting)
    assert kills == [(w, dispatch.QUIET)]


def test_the_memory_cap_kills_only_at_the_second_check_in_a_row():
    d = pool(max_workers=1, max_memory=1000, heartbeat_timeout=None)
    d.submit(Item(), 0.0)
    (w,) = ready_workers(d, 1)
    step = dispatch.MEMORY_CHECK_INTERVAL
    rss = {"now": 5000}
    measured = []

    def memory(worker):
        measured.append(worker)
        return rss["now"]

    assert d.timers(step, memory, nothing_waiting)[0] == []  # first strike
    rss["now"] = 10  # back under the cap: the strikes start over
    assert d.timers(2 * step, memory, nothing_waiting)[0] == []
    rss["now"] = 5000
    assert d.timers(3 * step, memory, nothing_waiting)[0] == []
    kills, _ = d.timers(4 * step, memory, nothing_waiting)
    assert kills[0][0] is w and kills[0][1][0] is errors.MemoryLimitError
    assert measured == [w, w, w, w]


def test_the_memory_cap_spares_a_task_whose_result_is_already_waiting():
    d = pool(max_workers=1, max_memory=1000, heartbeat_timeout=None)
    d.submit(Item(), 0.0)
    ready_workers(d, 1)
    step = dispatch.MEMORY_CHECK_INTERVAL
    for k in range(1, 5):
        assert d.timers(k * step, lambda w: 5000, lambda w: True)[0] == []


def test_a_worker_being_killed_or_gone_has_no_more_deadlines():
    d = pool(max_workers=1, task_timeout=1.0)
    d.submit(Item(), 0.0)
    (w,) = ready_workers(d, 1)
    w.kill_reason = dispatch.QUIET
    assert d.timers(100.0, no_memory, nothing_waiting)[0] == []
