"""`ourvidz-worker bench chat`: tokens per second for N concurrent requests, batched vs one at a time.

Both modes take the same N requests arriving at once and decode them N rows at a time, then one
at a time (what the runtime's batcher does with CHAT_MAX_BATCH=N and =1), generating exactly
`--max-tokens` tokens each (EOS ignored, so both do the same work). It prints
throughput, p50/p95 latency and the ratio. `--random-weights` builds the model from a config
folder (the full-size architecture, nothing to download).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def _load(model: str, device: str, dtype: torch.dtype, random_weights: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from workers.chat.tiny import build_qwen_tokenizer

    if random_weights:
        config = Qwen2Config.from_pretrained(model)
        with torch.device(device):
            net = Qwen2ForCausalLM(config).to(dtype)
        return net.eval(), build_qwen_tokenizer()
    return (AutoModelForCausalLM.from_pretrained(model, dtype=dtype, local_files_only=True).to(device).eval(),
            AutoTokenizer.from_pretrained(model, local_files_only=True))


def _measure(generator, requests, max_batch: int) -> dict[str, float]:
    """All requests arrive at once; they are decoded `max_batch` rows at a time, in arrival order
    (what the runtime's batcher does with a burst), and each latency runs to its batch's end."""
    latencies: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for i in range(0, len(requests), max_batch):
        completions = generator.generate(requests[i:i + max_batch])
        done = time.perf_counter() - started
        latencies += [done] * len(completions)
        tokens += sum(len(c.token_ids) for c in completions)
    wall = time.perf_counter() - started
    latencies.sort()
    return {"tokens_per_second": round(tokens / wall, 2), "wall_seconds": round(wall, 3),
            "p50_latency_s": round(statistics.median(latencies), 3),
            "p95_latency_s": round(latencies[max(0, int(len(latencies) * 0.95) - 1)], 3), "tokens": tokens}


def run_chat_bench(model: str, device: str = "cuda", requests: int = 16, max_tokens: int = 64,
                   random_weights: bool = False, dtype: str = "auto") -> dict[str, Any]:
    from shared.gpu import resolve_dtype
    from workers.chat.generator import Request, TextGenerator

    torch_dtype = resolve_dtype(dtype, device)
    net, tokenizer = _load(model, device, torch_dtype, random_weights)
    generator = TextGenerator(net, tokenizer, device)
    generator.stop_ids = set()  # fixed-length answers: both modes do identical work
    work = []
    for i in range(requests):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Question {i}: describe a lighthouse at dawn in vivid detail."}],
            tokenize=False, add_generation_prompt=True)
        work.append(Request(tokenizer(text).input_ids, max_tokens=max_tokens, temperature=0))
    generator.generate(work[:1])  # warm-up, not timed
    batched = _measure(generator, work, max_batch=requests)
    single = _measure(generator, work, max_batch=1)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    report = {"device": name, "model": ("random weights from " if random_weights else "") + model,
              "dtype": str(torch_dtype).removeprefix("torch."), "requests": requests, "max_tokens": max_tokens,
              "batched": batched, "one_at_a_time": single,
              "throughput_ratio": round(batched["tokens_per_second"] / single["tokens_per_second"], 2)}
    report["table"] = "\n".join([
        f"chat: {requests} concurrent requests x {max_tokens} tokens, {report['dtype']} on {name}",
        f"{'mode':<14} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7}",
        *[f"{label:<14} {m['tokens_per_second']:>9.1f} {m['p50_latency_s']:>7.2f} {m['p95_latency_s']:>7.2f}"
          for label, m in (("batched", batched), ("one at a time", single))],
        f"batching gives {report['throughput_ratio']:.2f}x the throughput",
    ])
    return report


def run_from_args(args) -> dict[str, Any]:
    return run_chat_bench(args.model, device=args.device, requests=args.requests, max_tokens=args.max_tokens,
                          random_weights=args.random_weights, dtype=args.dtype)
