"""`ourvidz-worker`: run a worker, submit jobs, inspect and repair the queues, check a deployment.

Mistakes get one line that says what is wrong and what to do (exit 2 for usage, 1 for a failed
run); `LOG_LEVEL=DEBUG` adds the traceback.
"""

from __future__ import annotations

import signal

from workers.cli import commands

# An orchestrator may stop a worker while it is still importing torch or loading a model: note
# the request now, before anything slow, and let the worker honour it once it runs.
signal.signal(signal.SIGTERM, lambda signum, _frame: commands.EARLY_STOP.append(signum))

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from workers.accel.torchao_import import hide_torchao_unless_asked  # noqa: E402
from workers.cli.bench_options import add_bench_parsers  # noqa: E402
from workers.cli.errors import run_command  # noqa: E402
from workers.registry import ENGINES, SDXL_TYPES, WAN_TYPES, tiny_model_builders  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line (the full usage is one --help away), and
    pointed at the help of the subcommand it was made in."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse says these at the top level: say them where they were typed
            self._innermost(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _innermost(self, parsed) -> argparse.ArgumentParser:
        parser = self
        for dest in ("command", "what"):  # the subcommand, then a benchmark's name
            commands = getattr(parser, "commands", {})
            chosen = commands.get(getattr(parsed, dest, None))
            if chosen is None:
                break
            parser = chosen
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ourvidz-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # each subcommand's parser, by name (its mistakes point at its help)

    run = sub.add_parser("run", help="run a worker until stopped (SIGTERM/Ctrl-C finish the job in hand)")
    run.add_argument("engine", choices=sorted(ENGINES), help="which worker: " + ", ".join(sorted(ENGINES)))
    run.add_argument("--model", default=os.environ.get("MODEL_PATH"),
                     help="model folder or checkpoint (default: MODEL_PATH)")
    run.add_argument("--device", help="torch device, e.g. cuda or cpu (default: DEVICE, else cuda)")
    run.add_argument("--worker-id", help="unique id of this worker process (default: WORKER_ID, else host-pid)")
    run.add_argument("--health-port", type=int,
                     help="serve /health and /metrics on this port (chat: the API port, default CHAT_PORT=7861)")
    run.add_argument("--max-jobs", type=int, help="exit 0 after this many jobs")
    run.add_argument("--queues", help="comma-separated queues to serve (default: the engine's own)")
    run.add_argument("--gpu-seconds", type=float, default=1.0, help="sim only: simulated GPU time per output")
    run.add_argument("--batch-images", type=int, default=1, help="sim only: outputs per engine call")
    run.set_defaults(func=commands.cmd_run)

    types = ", ".join((*SDXL_TYPES, *WAN_TYPES))
    submit = sub.add_parser("submit", help="push a job in the deployment's contract era, as the backend does",
                            description=f"Job types (configs/presets.toml): {types}.")
    submit.add_argument("type", help=f"job type: {types}")
    submit.add_argument("prompt", help="the prompt")
    submit.add_argument("--num-images", type=int, default=1, help="images per job (default 1; bounds in presets)")
    submit.add_argument("--seed", type=int, help="seed (default: random); image i uses seed + i")
    submit.add_argument("--size", help="WIDTHxHEIGHT, e.g. 1024x1024 (default: the preset's)")
    submit.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    submit.add_argument("--frames", type=int, help="video frames (default: the preset's)")
    submit.add_argument("--user-id", help="the owner's user id: the first folder of every object key")
    submit.add_argument("--reference-image-url", help="a reference image (image-to-image, or a VACE model's frames)")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument("--timeout", type=float, default=600.0, help="with --wait: seconds to wait (default 600)")
    submit.set_defaults(func=commands.cmd_submit)

    sub.add_parser("queue", help="queue depths, jobs in flight per worker, dead letters, outbox").set_defaults(
        func=commands.cmd_queue)

    top = sub.add_parser("top", help="the fleet as it runs: queues, workers, their jobs, failures (q leaves)")
    top.add_argument("--once", action="store_true", help="print one plain-text snapshot and exit (for scripts)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    top.set_defaults(func=commands.cmd_top)

    dlq = sub.add_parser("dlq", help="list, requeue or drop dead-lettered jobs")
    dlq.add_argument("action", choices=["list", "requeue", "drop", "purge"],
                     help="list them; put some (or --all) back; drop some for good; purge them all")
    dlq.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="with requeue or drop: the jobs")
    dlq.add_argument("--all", action="store_true", help="with requeue: every dead-lettered job")
    dlq.add_argument("--yes", action="store_true", help="with purge: do not ask for confirmation")
    dlq.set_defaults(func=commands.cmd_dlq)

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id", help="the job's id")
    cancel.set_defaults(func=commands.cmd_cancel)

    doctor = sub.add_parser("doctor", help="check Redis, storage, callbacks, GPU and model paths")
    doctor.add_argument("--model", action="append", default=[], help="a model path to check (repeatable)")
    doctor.add_argument("--pod", help="a pod file (configs/pod.toml): check the workers' GPU budgets fit the card")
    doctor.set_defaults(func=commands.cmd_doctor)

    builders = ", ".join(tiny_model_builders())
    tiny = sub.add_parser("make-tiny-model", help=f"write a tiny random-weight model ({builders})")
    tiny.add_argument("engine", help=f"which model: {builders}")
    tiny.add_argument("dir", help="folder to write it to")
    tiny.set_defaults(func=commands.cmd_make_tiny_model)

    fetch = sub.add_parser("fetch-models", help="download the production models to the models volume")
    fetch.add_argument("--dest", default=os.environ.get("MODELS_DIR", "/models"),
                       help="where the models go (default: MODELS_DIR, else /models)")
    fetch.add_argument("--only", default="sdxl,wan,chat", help="comma-separated: sdxl, wan, chat (default all)")
    fetch.add_argument("--sdxl", help="SDXL checkpoint URL (.safetensors) or hub id (default: SDXL base 1.0)")
    fetch.add_argument("--sdxl-sha256", help="expected sha256 of the checkpoint at --sdxl")
    fetch.set_defaults(func=commands.cmd_fetch_models)

    bench = sub.add_parser("bench", help="benchmarks: all, fleet, sdxl, wan, chat, cold-start (each has its own --help)")
    add_bench_parsers(bench)
    bench.set_defaults(func=commands.cmd_bench)
    return parser


def _interrupt(_signum, _frame) -> None:
    """SIGTERM as Ctrl-C: the command stops where it is, says so in one line, exits 130."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage mistake: argparse's own two lines, exit 2
    hide_torchao_unless_asked()  # FP8 reveals it again where it is applied (workers/accel/fp8.py)
    # `run` stops gracefully (its worker's handler); every other command stops where it is.
    stops_now = args.command != "run" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if stops_now else None

    def redis_url() -> str:
        from shared.ops.settings import Settings

        try:
            return Settings().effective_redis_url
        except Exception:  # noqa: BLE001 - only for the message
            return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

    def command() -> int:
        if stops_now and commands.EARLY_STOP:  # asked to stop while it was still starting
            raise KeyboardInterrupt
        return args.func(args)

    try:
        return run_command(command, args.command, redis_url)
    finally:
        if stops_now:  # called in-process (tests): the caller's handler again
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
