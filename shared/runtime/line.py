"""The ready line: decoded tasks waiting for the GPU, and the one lock that guards them.

The claimer puts tasks in (after waiting for room), a local source (the chat API) puts them in,
the GPU loop takes a batch, and a continuous run takes compatible work between its steps. The
line also knows who may still add to it (tasks being prepared, a claimer still running), so the
GPU loop knows when there is nothing more to wait for.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

from shared.engine.contract import Engine
from shared.runtime.task import Task


class StopSignal:
    """A worker asked to stop, and by when its running batch must have left the GPU."""

    def __init__(self):
        self._event = threading.Event()
        self.deadline = float("inf")

    def request(self, grace: float) -> None:
        self.deadline = min(self.deadline, time.monotonic() + grace)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def overdue(self, now: float) -> bool:
        """Stopping, and past the grace: a running input must stop now."""
        return self._event.is_set() and now >= self.deadline


class ReadyLine:
    def __init__(self, stop: StopSignal):
        self.stop = stop
        self._cond = threading.Condition()
        self._tasks: deque[Task] = deque()
        self._preparing = 0
        self._feeding = True  # a claimer may still add work

    def __len__(self) -> int:
        with self._cond:
            return len(self._tasks)

    def put(self, task: Task) -> None:
        with self._cond:
            self._tasks.append(task)
            self._cond.notify_all()

    def wait_for_room(self, capacity: int) -> bool:
        """Block until fewer than `capacity` tasks are waiting or being prepared; False when stopping."""
        with self._cond:
            while len(self._tasks) + self._preparing >= capacity and not self.stop.is_set():
                self._cond.wait(0.5)
            return not self.stop.is_set()

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """A task is being decoded for this line: the GPU loop waits for it rather than finish."""
        with self._cond:
            self._preparing += 1
        try:
            yield
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()

    def done_feeding(self) -> None:
        """The claimer has stopped: once the line is empty, a worker without a local source is done."""
        with self._cond:
            self._feeding = False
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiter to look again (at a stop)."""
        with self._cond:
            self._cond.notify_all()

    def drain(self) -> list[Task]:
        """Everything still waiting, taken out of the line (at shutdown)."""
        with self._cond:
            left, self._tasks = list(self._tasks), deque()
            return left

    def take_batch(self, engine: Engine, wait_ms: float, serves_local: bool) -> list[Task] | None:
        """Block until there is work, then take the first task in line plus compatible ones (an
        equal `engine.batch_key`) up to `engine.max_batch_images` in `engine.cost`, waiting at most
        `wait_ms` for company and never when the batch is full. None: stopping, or nothing more
        will come (the claimer is done, nothing is being prepared and no local source feeds it)."""
        with self._cond:
            while not self._tasks:
                if self.stop.is_set() or (not self._feeding and self._preparing == 0 and not serves_local):
                    return None
                self._cond.wait(0.5)
            if self.stop.is_set():
                return None
            first = self._tasks.popleft()
            batch, cost = [first], engine.cost(first.input)
            key = engine.batch_key(first.input)
            if key is None:
                return batch
            window_end = time.monotonic() + wait_ms / 1000
            while cost < engine.max_batch_images:
                taken = self._take(engine, key, engine.max_batch_images - cost, in_line=False)
                batch.extend(taken)
                cost += sum(engine.cost(task.input) for task in taken)
                remaining = window_end - time.monotonic()
                if cost >= engine.max_batch_images or remaining <= 0 or self.stop.is_set():
                    break
                if not taken:
                    self._cond.wait(remaining)
            return batch

    def take_compatible(self, engine: Engine, key: Hashable, budget: int) -> list[Task]:
        """Tasks with this batch key from the head of the line, up to `budget` in cost, stopping at
        the first of another kind (a continuous run that keeps admitting never starves a different
        model waiting behind it)."""
        with self._cond:
            return self._take(engine, key, budget, in_line=True)

    def _take(self, engine: Engine, key: Hashable, budget: int, in_line: bool) -> list[Task]:
        taken = []
        for task in list(self._tasks):
            cost = engine.cost(task.input)
            if cost <= budget and engine.batch_key(task.input) == key:
                self._tasks.remove(task)
                taken.append(task)
                budget -= cost
            elif in_line:
                break
        return taken
