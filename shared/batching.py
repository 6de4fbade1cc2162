"""Which ready tasks run together: the first in line, plus compatible ones up to the engine's budget.

Compatible means an equal `engine.batch_key`; the budget is `engine.max_batch_images` counted in
`engine.cost` (images or videos). A batch waits at most the batch window for company, and never
when it is already full.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runtime imports this module; only the type is needed here
    from shared.runtime import Worker
    from shared.task import Task


def next_batch(worker: Worker) -> list[Task] | None:
    """Block until there is work; None when the worker is stopping or has nothing more to do."""
    engine, cond, ready = worker.engine, worker._cond, worker._ready
    with cond:
        while not ready:
            if worker.stopping.is_set() or (worker._claimer_done and worker._preparing == 0 and not worker.accepts_local):
                return None
            cond.wait(0.5)
        if worker.stopping.is_set():
            return None
        first = ready.popleft()
        batch, cost = [first], engine.cost(first.input)
        key = engine.batch_key(first.input)
        if key is None:
            return batch
        wait_ms = engine.batch_wait_ms if engine.batch_wait_ms is not None else worker.settings.batch_wait_ms
        window_end = time.monotonic() + wait_ms / 1000
        while cost < engine.max_batch_images:
            taken = _take_compatible(worker, key, engine.max_batch_images - cost)
            for task in taken:
                batch.append(task)
                cost += engine.cost(task.input)
            remaining = window_end - time.monotonic()
            if cost >= engine.max_batch_images or remaining <= 0 or worker.stopping.is_set():
                break
            if not taken:
                cond.wait(remaining)
        return batch


def _take_compatible(worker: Worker, key, budget: int) -> list[Task]:
    taken = []
    for task in list(worker._ready):
        cost = worker.engine.cost(task.input)
        if cost <= budget and worker.engine.batch_key(task.input) == key:
            worker._ready.remove(task)
            taken.append(task)
            budget -= cost
    return taken
