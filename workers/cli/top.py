"""`ourvidz-worker top`: the fleet as it runs, read from Redis alone, refreshed every second.

Queues (depth, age of the job next in line), live workers (engine, state, the job on the engine
and its step, the share of the last minute the engine was busy, jobs done and failed), dead
letters, the outbox, and the latest failures with their reasons. `q` or Ctrl-C leaves; `--once`
prints one plain-text snapshot (for scripts). The workers write what it shows with their
heartbeat, only when it changed (shared/runtime/status.py).
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shared.source import keys
from shared.source.admin import element_age
from shared.source.element import Era
from shared.source.queue import pop_end

QUEUES = (*keys.JOB_QUEUES, keys.CHAT_QUEUE)
FAILURES_SHOWN = 8


def read_fleet(client: redis.Redis, era: Era) -> dict[str, Any]:
    """Everything `top` shows, in one round trip."""
    head = -1 if pop_end(era) == "RIGHT" else 0
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
        pipe.lindex(queue, head)
    pipe.zrange(keys.LEASES, 0, -1, withscores=True)
    pipe.hgetall(keys.WORKER_QUEUES)
    pipe.hgetall(keys.WORKER_STATUS)
    pipe.llen(keys.DEAD_LETTER)
    pipe.zcard(keys.OUTBOX)
    pipe.lrange(keys.FAILURES, 0, FAILURES_SHOWN - 1)
    answers = pipe.execute()
    queues = {q: {"depth": answers[2 * i], "oldest_age": element_age(answers[2 * i + 1])}
              for i, q in enumerate(QUEUES)}
    leases, registry, statuses, dead, outbox, failures = answers[2 * len(QUEUES):]
    now = time.time()
    workers = {}
    for worker in sorted(set(registry) | set(dict(leases))):
        status = _json(statuses.get(worker)) or {}
        workers[worker] = {**status, "alive": dict(leases).get(worker, 0) > now}
    return {"queues": queues, "workers": workers, "dead_letters": dead, "outbox": outbox,
            "failures": [f for f in map(_json, failures) if f]}


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def render(fleet: dict[str, Any], now: float | None = None) -> Group:
    now = time.time() if now is None else now
    queues = Table(title="queues", title_justify="left", box=box.SIMPLE)
    for column in ("queue", "depth", "oldest"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for name, queue in fleet["queues"].items():
        age = queue["oldest_age"]
        queues.add_row(name, str(queue["depth"]), "-" if not queue["depth"] else _age(age))
    workers = Table(title="workers", title_justify="left", box=box.SIMPLE)
    for column in ("worker", "engine", "state", "job", "step", "busy 1m", "done", "failed"):
        workers.add_column(column, justify="right" if column in ("step", "busy 1m", "done", "failed") else "left")
    for worker, status in fleet["workers"].items():
        jobs = status.get("jobs") or []
        job = jobs[0] if jobs else {}
        more = f" +{len(jobs) - 1}" if len(jobs) > 1 else ""
        state = status.get("state", "?") if status.get("alive") else "lost (lease lapsed)"
        step = f"{job['step']}/{job['steps']}" if job.get("steps") else "-"
        workers.add_row(worker, status.get("engine", "?"), state, (job.get("id") or "-") + more, step,
                        f"{100 * status.get('busy', 0):.0f} %", str(status.get("completed", 0)),
                        str(status.get("failed", 0)))
    totals = Text(f"dead letters {fleet['dead_letters']}    outbox {fleet['outbox']}    "
                  f"workers alive {sum(w['alive'] for w in fleet['workers'].values())}")
    failures = Table(title="latest failures", title_justify="left", box=box.SIMPLE)
    for column in ("when", "job", "worker", "error"):
        failures.add_column(column)
    for failure in fleet["failures"]:
        when = datetime.fromtimestamp(failure.get("at", now), UTC).strftime("%H:%M:%S")
        failures.add_row(when, str(failure.get("job_id")), str(failure.get("worker")),
                         f"{failure.get('error_type')}: {failure.get('message')}")
    return Group(queues, workers, totals, failures)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def print_once(read: Callable[[], dict[str, Any]]) -> None:
    Console(color_system=None, width=int(os.environ.get("COLUMNS", "120")), soft_wrap=True).print(render(read()))


def watch(read: Callable[[], dict[str, Any]], interval: float = 1.0) -> None:
    """Full screen until `q` (or Ctrl-C)."""
    console = Console()
    with _keys() as key, Live(render(read()), console=console, screen=True, auto_refresh=False) as live:
        while True:
            pressed = key(interval)
            if pressed in ("q", "Q"):
                return
            live.update(render(read()), refresh=True)


@contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """The key pressed within a timeout, one at a time, without echo or Enter (cbreak mode), the
    terminal put back as it was on the way out. Without a terminal, only Ctrl-C leaves."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        yield lambda timeout: time.sleep(timeout)
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        def key(timeout: float) -> str | None:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 1).decode(errors="replace") if ready else None

        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
