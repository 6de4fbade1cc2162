"""The worker's shared state, each piece on its own, without a running worker: the ready line (what
waits for the GPU and which tasks form a batch), the hand-off behind the GPU, the stop signal, and
the watchdog's clock as the keeper reads it."""

import threading
import time
from types import SimpleNamespace

import pytest

from shared.runtime.batching import BatchClock
from shared.runtime.handoff import Handoff
from shared.runtime.line import ReadyLine, StopSignal
from shared.runtime.task import Task
from tests.helpers import wait_until


class Sizes:
    """An engine as the line sees it: inputs batch together when their `size` is equal."""

    max_batch_images = 4

    def cost(self, item):
        return item.count

    def batch_key(self, item):
        return item.size


def task(job_id: str, size=64, count=1) -> Task:
    plan = SimpleNamespace(input=SimpleNamespace(id=job_id, size=size, count=count), job=None)
    return Task(job_id=job_id, plan=plan)


def ids(tasks):
    return [t.job_id for t in tasks]


def test_a_batch_takes_the_first_in_line_and_compatible_work_up_to_the_cost_bound():
    line = ReadyLine(StopSignal())
    for t in [task("a"), task("b", size=128), task("c", count=2), task("d"), task("e")]:
        line.put(t)
    batch = line.take_batch(Sizes(), wait_ms=0, serves_local=False)
    assert ids(batch) == ["a", "c", "d"]  # 1 + 2 + 1 = 4: full, so "e" waits; "b" is another size
    assert ids(line.take_batch(Sizes(), wait_ms=0, serves_local=False)) == ["b"]
    assert ids(line.drain()) == ["e"] and len(line) == 0


def test_a_batch_waits_its_window_for_company_but_not_when_full():
    line = ReadyLine(StopSignal())
    line.put(task("a"))
    threading.Timer(0.1, line.put, [task("late")]).start()
    started = time.monotonic()
    assert ids(line.take_batch(Sizes(), wait_ms=1000, serves_local=False)) == ["a", "late"]
    assert time.monotonic() - started >= 0.95  # not full: it waited out the window
    for name in "wxyz":
        line.put(task(name))
    started = time.monotonic()
    assert len(line.take_batch(Sizes(), wait_ms=5000, serves_local=False)) == 4
    assert time.monotonic() - started < 1.0


def test_the_line_ends_only_when_nothing_more_can_come():
    line = ReadyLine(StopSignal())
    result = []
    taker = threading.Thread(target=lambda: result.append(line.take_batch(Sizes(), 0, serves_local=False)))
    with line.preparing():  # a task being decoded: the GPU loop waits for it
        taker.start()
        line.done_feeding()
        time.sleep(0.3)
        assert taker.is_alive()
        line.put(task("prepared"))
    taker.join(5)
    assert ids(result[0]) == ["prepared"]
    assert line.take_batch(Sizes(), 0, serves_local=False) is None  # fed out and empty: done
    stop = StopSignal()
    local = ReadyLine(stop)
    local.done_feeding()
    waiter = threading.Thread(target=lambda: result.append(local.take_batch(Sizes(), 0, serves_local=True)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # a local source (the chat API) may still submit
    stop.request(grace=0)
    local.wake()
    waiter.join(5)
    assert result[-1] is None


def test_room_is_waited_for_and_a_stop_ends_the_wait():
    stop = StopSignal()
    line = ReadyLine(stop)
    line.put(task("a"))
    line.put(task("b"))
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(line.wait_for_room(capacity=2)))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()
    line.take_batch(Sizes(), wait_ms=0, serves_local=False)  # both leave for the GPU: room
    waiter.join(5)
    assert answers == [True]
    line.put(task("c"))
    line.put(task("d"))
    waiter = threading.Thread(target=lambda: answers.append(line.wait_for_room(capacity=2)))
    waiter.start()
    stop.request(grace=5)
    line.wake()
    waiter.join(5)
    assert answers == [True, False]


def test_compatible_work_is_taken_from_the_head_only():
    line = ReadyLine(StopSignal())
    for t in [task("a"), task("b"), task("other", size=128), task("c")]:
        line.put(t)
    assert ids(line.take_compatible(Sizes(), 64, budget=8)) == ["a", "b"]  # "c" waits behind "other"
    assert ids(line.take_compatible(Sizes(), 64, budget=8)) == []
    assert ids(line.drain()) == ["other", "c"]


def test_the_stop_signal_keeps_the_earliest_deadline():
    stop = StopSignal()
    assert not stop.is_set() and not stop.overdue(time.monotonic() + 1e6)
    stop.request(grace=60)
    assert stop.is_set() and not stop.overdue(time.monotonic())
    stop.request(grace=0)  # a second signal: now
    stop.request(grace=60)  # a later, longer grace never extends it
    assert stop.overdue(time.monotonic())


def test_the_hand_off_delivers_behind_and_pushes_back_when_full():
    gate, delivered = threading.Event(), []

    def finish(t, outcome, dead_letter):
        gate.wait(10)
        delivered.append((t.job_id, outcome, dead_letter))

    handoff = Handoff(workers=1, finish=finish)
    handoff.hand_off(task("a"), "ok")
    handoff.hand_off(task("b"), "ok", dead_letter="why")  # two waiting: the bound (2 x 1 worker)
    third = threading.Thread(target=handoff.hand_off, args=(task("c"), "ok"))
    third.start()
    time.sleep(0.3)
    assert third.is_alive(), "a full hand-off blocks its caller (the GPU loop) instead of queueing more"
    gate.set()
    third.join(5)
    handoff.close()
    assert sorted(delivered) == [("a", "ok", None), ("b", "ok", "why"), ("c", "ok", None)]


def test_the_hand_off_lets_go_of_a_plan_even_when_delivery_fails():
    held = task("a")

    def finish(t, outcome, dead_letter):
        raise RuntimeError("store away")

    handoff = Handoff(workers=1, finish=finish)
    handoff.hand_off(held, "ok")
    handoff.close()
    assert held.plan is None


def test_the_watchdog_reads_the_gpu_loops_clock(monkeypatch, make_settings, redis_client):
    from shared.ops.logging import get_logger
    from shared.runtime.keeper import Keeper
    from shared.source.queue import JobQueue

    exits = []
    monkeypatch.setattr("shared.runtime.keeper.os._exit", exits.append)
    monkeypatch.setattr("shared.runtime.keeper.WATCHDOG_GRACE", 0.0)
    settings = make_settings(lease_seconds=1, job_timeout_seconds=0.5)
    queue = JobQueue(redis_client, "w-watch", ("q",), "v2", 1, 3)
    clock = BatchClock()
    keeper = Keeper(queue, settings, get_logger(), None, clock)
    keeper.start()
    try:
        time.sleep(1.0)
        assert exits == []  # no batch on the engine: nothing to watch
        clock.start(time.monotonic())
        wait_until(lambda: exits == [70], 5)
    finally:
        clock.stop()
        keeper.stop()


@pytest.mark.parametrize("grace", [0.0, 30.0])
def test_a_stop_request_wakes_a_waiting_gpu_loop(grace):
    stop = StopSignal()
    line = ReadyLine(stop)
    result = []
    loop = threading.Thread(target=lambda: result.append(line.take_batch(Sizes(), 0, serves_local=True)))
    loop.start()
    stop.request(grace)
    line.wake()
    loop.join(2)
    assert not loop.is_alive() and result == [None]
