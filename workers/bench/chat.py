"""`ourvidz-worker bench chat`: the chat worker as its callers see it, and its decoder against transformers'.

In one run, on the model given (`--random-weights`: a config folder, real size, random weights):
1. **Decoder**: this backend's `generate` against `transformers`' `model.generate` on the same
   left-padded batch (greedy, exactly `--max-tokens` tokens per row, so equal work), for short
   and for long (~350-token) prompts. (transformers backend only: vLLM has no such pairing.)
2. **Serving**: a real chat worker (the fleet's runtime, uvicorn) in this process; the callers in
   a process of their own (workers/bench/chat_load.py), over loopback HTTP through
   `/v1/chat/completions` with `ignore_eos`, so every answer is exactly `--max-tokens` tokens:
   - tokens/s and p50/p95 latency one at a time, then at each `--concurrency` (16 and 64);
   - a short request (4 tokens) sent while a long one (`--long-tokens`) runs, against the same
     short request alone: continuous batching should let it finish long before the long one;
   - the median latency of a 401 and of `/health`, idle and beside the long request.
It prints the table and the goals of issue 11 with pass/fail; `--json` gives everything.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import torch

from workers.bench.measure import figure, interleaved, per, timed
from workers.bench.step_profile import decoding_step_profile
from workers.bench.step_profile import summary as step_summary

BENCH_KEY = "bench-chat-key"
SAMPLES = 3  # runs of each throughput measurement; the figure is their median


def _prompts(tokenizer, count: int, tokens: int) -> list[list[int]]:
    """`count` chat prompts; with `tokens`, each is about that long (filler text in front)."""
    prompts = []
    for i in range(count):
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"Question {i}: describe a lighthouse."}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if tokens > len(ids):
            filler = tokenizer(" the keeper watched the waves" * (tokens // 4 + 1), add_special_tokens=False).input_ids
            ids = filler[:tokens - len(ids) + i % 7] + ids  # lengths differ a little, as real prompts do
        prompts.append(ids)
    return prompts


def versus_transformers(generator, rows: int, max_tokens: int, prompt_tokens: int) -> dict[str, Any]:
    """This backend's batch decoding against `model.generate` on the same left-padded batch; with CUDA
    graphs, also against the same decoder eager (and how many rows' greedy tokens the two share)."""
    from workers.chat.generator import Request, TextGenerator

    model, tokenizer, device = generator.model, generator.tokenizer, generator.device
    prompts = _prompts(tokenizer, rows, prompt_tokens)
    longest = max(len(p) for p in prompts)
    ids = torch.full((rows, longest), generator.pad_id, dtype=torch.long)
    mask = torch.zeros((rows, longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):], mask[i, longest - len(p):] = torch.tensor(p), 1
    ids, mask = ids.to(device), mask.to(device)

    def theirs() -> None:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                       do_sample=False, pad_token_id=generator.pad_id)

    requests = [Request(p, max_tokens=max_tokens, temperature=0, ignore_eos=True) for p in prompts]
    answers: dict[str, list] = {}

    def ours() -> None:
        answers["this_backend"] = [c.token_ids for c in generator.generate(requests)]

    runs = [("transformers_generate", theirs), ("this_backend", ours)]
    if generator.decoder is not None:
        eager = TextGenerator(model, tokenizer, device, generator.max_context)

        def eager_decoder() -> None:
            answers["eager_decoder"] = [c.token_ids for c in eager.generate(requests)]

        runs.append(("eager_decoder", eager_decoder))
    for _, run in runs:
        run()  # warm-up
    # medians of samples taken in turn: one sample on a shared machine swings 2x, and so does the machine
    timings = interleaved({name: lambda run=run: timed(run, device) for name, run in runs})
    tokens = rows * max_tokens
    rates = {name: per(tokens, seconds) for name, seconds in timings.items()}
    result = {"rows": rows, "prompt_tokens": round(sum(map(len, prompts)) / rows), "max_tokens": max_tokens,
              "transformers_tokens_per_second": round(rates["transformers_generate"]["median"], 1),
              "this_backend_tokens_per_second": round(rates["this_backend"]["median"], 1),
              "ratio": round(timings["transformers_generate"]["median"] / timings["this_backend"]["median"], 2),
              "figures": rates}
    if "eager_decoder" in timings:  # bf16 rows may part ways where two tokens' logits nearly tie
        result["eager_decoder_tokens_per_second"] = round(rates["eager_decoder"]["median"], 1)
        result["rows_with_the_eager_tokens"] = sum(a == b for a, b in zip(answers["this_backend"],
                                                                         answers["eager_decoder"], strict=True))
    return result


def _serve(engine, settings, device: str):
    from workers.registry import build_worker

    worker = build_worker(engine, settings, health_port=0, install_signal_handlers=False, device=device)
    thread = threading.Thread(target=worker.run, name="bench-chat-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 1800  # a full-size model takes a while to load
    while not (worker.state in ("ready", "failed") and (worker.http is not None or worker.state == "failed")):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the chat worker did not become ready (state {worker.state})")
        time.sleep(0.05)
    if worker.state == "failed":
        raise RuntimeError("the chat worker failed to start (see the log)")
    return worker, thread


def _callers(url: str, steps: list[dict]) -> list[dict]:
    plan = json.dumps({"url": url, "key": BENCH_KEY, "steps": steps})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-m", "workers.bench.chat_load"], input=plan, capture_output=True, text=True,
                          cwd=root, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the bench's callers failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def serving(engine, settings, max_tokens: int, concurrency: list[int], long_tokens: int,
            one_at_a_time: int = 16, device: str = "cpu") -> dict[str, Any]:
    worker, thread = _serve(engine, settings, device)
    try:
        url = f"http://127.0.0.1:{worker.http.port}"

        def body(i: int, tokens: int) -> dict:
            return {"model": "qwen_instruct", "max_tokens": tokens, "ignore_eos": True, "temperature": 0.7,
                    "top_p": 0.9, "seed": i, "messages": [{"role": "user", "content": f"Question {i}: describe "
                                                                                      "a lighthouse at dawn."}]}

        short, long = body(1, 4), body(2, long_tokens)
        # Each throughput figure is the median of SAMPLES runs (workers/bench/measure.py), taken in
        # rounds (one at a time, then each burst; a short request alone, then beside a long one) so
        # that the machine's drift moves both sides of a ratio alike.
        throughput = [{"op": "sequential", "n": one_at_a_time, "body": body(0, max_tokens)},
                      *[{"op": "concurrent", "n": n, "body": body(0, max_tokens)} for n in concurrency]]
        latency = [{"op": "sequential", "n": 5, "body": short},
                   {"op": "beside", "long": long, "short": short, "delay": 0.5}]
        steps = [{"op": "sequential", "n": 3, "body": body(0, max_tokens)},  # warm-up, not reported
                 *throughput * SAMPLES, *latency * SAMPLES,
                 {"op": "probe", "path": "/health", "n": 200},
                 {"op": "probe", "path": "/v1/chat/completions", "n": 200, "body": short, "key": "wrong-key"}]
        results = _callers(url, steps)
        busy = _probe_while_busy(url, long)
    finally:
        worker.stop(grace=30)
        thread.join(timeout=120)
    rounds = results[1:1 + len(throughput) * SAMPLES]
    one = _merged(rounds[0::len(throughput)])
    bursts = {n: _merged(rounds[i + 1::len(throughput)]) for i, n in enumerate(concurrency)}
    pairs = results[1 + len(rounds):1 + len(rounds) + 2 * SAMPLES]
    alone, beside = pairs[0::2], pairs[1::2]
    health, refused = results[1 + len(rounds) + 2 * SAMPLES:]
    short_alone = figure(r["p50_latency_s"] for r in alone)
    short_beside = figure(r["short"]["seconds"] for r in beside)
    return {"one_at_a_time": one, "concurrent": bursts, "short_alone_p50_s": round(short_alone["median"], 3),
            "short_alone_figure": short_alone, "short_beside_long_s": round(short_beside["median"], 3),
            "short_beside_long_figure": short_beside,
            "long_s": round(statistics.median(r["long"]["seconds"] for r in beside), 3), "long_tokens": long_tokens,
            "health_idle": health, "unauthorized_idle": refused, **busy}


def _merged(samples: list[dict]) -> dict[str, Any]:
    """Repeated runs of one measurement as one: throughput and latencies by their medians (with the
    throughput's spread), requests and answers summed."""
    rates = figure(s["tokens_per_second"] for s in samples)
    return {**samples[-1], "tokens_per_second": round(rates["median"], 1), "tokens_per_second_figure": rates,
            "requests": sum(s["requests"] for s in samples), "answered": sum(s["answered"] for s in samples),
            "errors": {kind: sum(s["errors"].get(kind, 0) for s in samples) for kind in
                       {kind for s in samples for kind in s["errors"]}},
            "p50_latency_s": _median_of(s["p50_latency_s"] for s in samples),
            "p95_latency_s": _median_of(s["p95_latency_s"] for s in samples)}


def _median_of(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _probe_while_busy(url: str, long: dict, callers: int = 16) -> dict[str, Any]:
    """/health and a 401 while `callers` long generations keep the engine busy."""
    steps = [{"op": "probe", "path": "/health", "n": 100},
             {"op": "probe", "path": "/v1/chat/completions", "n": 100, "body": long, "key": "wrong-key"}]
    box: dict[str, Any] = {}
    burst = [{"op": "concurrent", "n": callers, "body": long}]
    runner = threading.Thread(target=lambda: box.update(burst=_callers(url, burst)[0]))
    runner.start()
    time.sleep(0.5)  # the burst is decoding by now
    health, refused = _callers(url, steps)
    runner.join()
    still_busy = box["burst"]["wall_seconds"] > 0.5 + 0.1  # the probes ran while it decoded
    return {"health_busy": health, "unauthorized_busy": refused, "busy_while_probed": still_busy}


def run_chat_bench(model: str, device: str = "cuda", max_tokens: int = 64, random_weights: bool = False,
                   dtype: str = "auto", backend: str = "transformers", concurrency: tuple[int, ...] = (16, 64),
                   long_tokens: int = 512, compare_rows: int = 16, one_at_a_time: int = 16,
                   cuda_graphs: bool = False) -> dict[str, Any]:
    from shared.ops.engine_settings import ChatSettings
    from shared.ops.gpu import resolve_dtype
    from shared.ops.settings import Settings
    from workers.chat.engine import ChatEngine

    chat = ChatSettings(chat_api_key=BENCH_KEY, max_batch=max(concurrency), batch_wait_ms=0, consume_queue=False,
                        backend=backend, dtype=dtype, cuda_graphs=cuda_graphs)
    settings = Settings(chat=chat, worker_id=f"bench-chat-{os.getpid()}")
    engine = ChatEngine(model, chat, random_weights=random_weights)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    report: dict[str, Any] = {"device": name, "backend": backend, "cuda_graphs": cuda_graphs,
                              "model": ("random weights from " if random_weights else "") + model,
                              "dtype": str(resolve_dtype(dtype, device)).removeprefix("torch."),
                              "max_tokens": max_tokens}
    report["serving"] = serving(engine, settings, max_tokens, list(concurrency), long_tokens, one_at_a_time, device)
    if engine.backend == "transformers":
        generator = engine.models["qwen_instruct"].generator
        decoder = generator.decoder  # None: eager, or graphs asked for and their capture failed (logged)
        report["decoder"] = {"cuda_graphs_asked": cuda_graphs, "graphed": decoder is not None,
                             "captures": getattr(decoder, "captures", 0), "replays": getattr(decoder, "replays", 0)}
        report["versus_transformers"] = [versus_transformers(generator, rows, max_tokens, length)
                                         for rows, length in ((1, 0), (compare_rows, 0), (compare_rows, 350))]
        # where one stream's token time goes (the device's busy share, kernels a token): the next change
        report["step_profile"] = decoding_step_profile(generator, _prompts(generator.tokenizer, 1, 0)[0], max_tokens)
    report["goals"] = _goals(report)
    report["table"] = _table(report)
    return report


def _goals(report: dict[str, Any]) -> dict[str, bool]:
    s = report["serving"]
    burst = s["concurrent"]
    # each burst runs in several rounds (samples): every request of every round must be answered
    goals = {f"{n} concurrent: all answered, none reset": b["answered"] == b["requests"] for n, b in burst.items()}
    if 16 in burst:
        goals["16-way >= 3x one at a time"] = burst[16]["tokens_per_second"] >= 3 * s["one_at_a_time"]["tokens_per_second"]
    goals["short request beside a long one <= max(3x alone, 0.3x long)"] = (
        s["short_beside_long_s"] <= max(3 * s["short_alone_p50_s"], 0.3 * s["long_s"]))
    goals["401 and /health <= 10 ms median (idle)"] = max(s["health_idle"]["median_ms"],
                                                          s["unauthorized_idle"]["median_ms"]) <= 10
    return goals


def _table(r: dict[str, Any]) -> str:
    s = r["serving"]
    rows = [("one at a time", s["one_at_a_time"])] + [(f"{n} concurrent", b) for n, b in s["concurrent"].items()]
    lines = [f"chat: {r['model']}, {r['dtype']} on {r['device']}, backend {r['backend']}, "
             f"{r['max_tokens']} tokens per answer, over HTTP (/v1/chat/completions)",
             f"{'mode':<16} {'answered':>9} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7}  vs one at a time"]
    base = s["one_at_a_time"]["tokens_per_second"] or 1
    for label, m in rows:
        lines.append(f"{label:<16} {m['answered']:>4}/{m['requests']:<4} {m['tokens_per_second']:>9.1f} "
                     f"{m['p50_latency_s'] or 0:>7.3f} {m['p95_latency_s'] or 0:>7.3f}  "
                     f"{m['tokens_per_second'] / base:.2f}x" + (f"  errors {m['errors']}" if m["errors"] else ""))
    lines.append(f"short request (4 tokens): {s['short_alone_p50_s']:.3f} s alone, {s['short_beside_long_s']:.3f} s "
                 f"beside a {s['long_tokens']}-token request that took {s['long_s']:.3f} s")
    lines.append(f"median ms: /health {s['health_idle']['median_ms']:.2f} idle, {s['health_busy']['median_ms']:.2f} "
                 f"busy; 401 {s['unauthorized_idle']['median_ms']:.2f} idle, {s['unauthorized_busy']['median_ms']:.2f} busy"
                 + ("" if s["busy_while_probed"] else " (the busy burst ended before the probes: raise --long-tokens)"))
    for v in r.get("versus_transformers", []):
        lines.append(f"decoder vs transformers.generate, {v['rows']} rows x {v['max_tokens']} tokens, "
                     f"~{v['prompt_tokens']}-token prompts: {v['this_backend_tokens_per_second']:.1f} vs "
                     f"{v['transformers_tokens_per_second']:.1f} tokens/s = {v['ratio']:.2f}x")
    if "step_profile" in r:
        lines.append(f"decoding profile: {step_summary(r['step_profile'])}")
    lines += [f"goal {'met' if ok else 'MISSED'}: {goal}" for goal, ok in r["goals"].items()]
    return "\n".join(lines)


def run_from_args(args) -> dict[str, Any]:
    concurrency = tuple(int(n) for n in str(getattr(args, "concurrency", "16,64")).split(","))
    return run_chat_bench(args.model, device=args.device, max_tokens=args.max_tokens,
                          random_weights=args.random_weights, dtype=args.dtype,
                          backend=getattr(args, "backend", "transformers"), concurrency=concurrency,
                          long_tokens=getattr(args, "long_tokens", 512))
