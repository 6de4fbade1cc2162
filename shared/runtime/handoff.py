"""Behind the GPU: each finished job is handed to a bounded pool that delivers it.

Bounded twice: `workers` deliveries run side by side, and at most twice that many wait. When
deliveries fall behind, `hand_off` blocks the GPU loop (back-pressure) instead of filling memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.runtime.task import Task

Finish = Callable[[Task, Any, "str | None"], None]  # (task, outcome, dead-letter reason) -> None


class Handoff:
    def __init__(self, workers: int, finish: Finish):
        self._finish = finish
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="post")
        self._slots = threading.BoundedSemaphore(workers * 2)

    def hand_off(self, task: Task, outcome: Any, dead_letter: str | None = None) -> None:
        """Deliver `outcome` (a result or a JobError) for `task` behind the GPU; `dead_letter`: the
        reason it goes to the dead-letter list with its failed report."""
        self._slots.acquire()

        def deliver() -> None:
            try:
                self._finish(task, outcome, dead_letter)
            finally:
                task.plan = None  # the references and pictures go now, whoever still holds the task
                self._slots.release()

        self._pool.submit(deliver)

    def close(self) -> None:
        """Wait until every job handed off is delivered."""
        self._pool.shutdown(wait=True)
