"""`bench all`'s rows for what runs around the diffusion engines: the chat worker (over HTTP, and its
decoder against transformers' `generate`) and the fleet runtime (the sim engine, claim ahead and
deliver behind). Same signature as all_engines' SDXL and WAN row builders, which `BENCHES` lists."""

from __future__ import annotations

from pathlib import Path

from shared.ops.settings import Settings
from workers.bench.measure import MIN_SAMPLES, figure, free_memory
from workers.bench.report import row


def chat_rows(device: str, name: str, tiny: bool, tmp: Path, peak: float, configs: Path,
              asked: tuple[str, ...]) -> list[dict]:
    import importlib.util

    from workers.bench.chat import run_chat_bench
    from workers.chat.tiny import make_tiny_chat

    # Full size: 7B on a GPU in a lease's minutes, so 4 requests one at a time and a 256-token long request.
    if tiny:
        model, random, tokens, concurrency, long, alone = str(make_tiny_chat(tmp / "chat")), False, 32, (16, 64), 256, 16
    else:
        model, random, tokens, concurrency, long, alone = str(configs / "qwen2.5-7b-instruct"), True, 64, (16, 64), 256, 4
    backends = ["transformers"]
    if device.startswith("cuda") and importlib.util.find_spec("vllm") is not None:
        backends.append("vllm")
    rows, single = [], {}
    for backend in backends:
        # On CUDA the decoding steps replay from CUDA graphs (CHAT_CUDA_GRAPHS); the eager decoder's
        # figures are transformers.generate's rows, on the same batches.
        graphs = backend == "transformers" and device.startswith("cuda")
        report = run_chat_bench(model, device=device, max_tokens=tokens, random_weights=random, backend=backend,
                                concurrency=concurrency, long_tokens=long, one_at_a_time=alone, cuda_graphs=graphs)
        serving = report["serving"]
        one = serving["one_at_a_time"]["tokens_per_second_figure"]
        single[backend] = serving
        base = {"model": report["model"], "dtype": report["dtype"], "max_tokens": tokens, "backend": backend,
                "cuda_graphs": graphs}
        for n, burst in serving["concurrent"].items():
            rows.append(row("chat", name, {**base, "concurrent": n}, ("one request at a time", one),
                             (f"{n} concurrent, continuous batching", burst["tokens_per_second_figure"]),
                             "tokens_per_second",
                             "higher", answered=f"{burst['answered']}/{burst['requests']}",
                             p50_s=burst["p50_latency_s"], p95_s=burst["p95_latency_s"]))
        rows.append(row("chat", name, {**base, "long_tokens": long}, ("a short request alone",
                                                                      serving["short_alone_figure"]),
                        ("the same beside a long one", serving["short_beside_long_figure"]), "seconds", "lower",
                        long_request_s=serving["long_s"], decoder=report.get("decoder")))
        for v in report.get("versus_transformers", []):
            rows.append(row("chat", name, {**base, "rows": v["rows"], "prompt_tokens": v["prompt_tokens"]},
                             ("transformers generate", v["figures"]["transformers_generate"]),
                             ("this decoder", v["figures"]["this_backend"]), "tokens_per_second", "higher",
                             **({"step_profile": report["step_profile"]}
                                if v["rows"] == 1 and "step_profile" in report else {})))
            if "eager_decoder_tokens_per_second" in v:  # CUDA graphs against the same decoder without them
                rows.append(row("chat", name, {**base, "rows": v["rows"], "prompt_tokens": v["prompt_tokens"]},
                                 ("this decoder, eager", v["figures"]["eager_decoder"]),
                                 ("this decoder, CUDA graphs", v["figures"]["this_backend"]),
                                 "tokens_per_second", "higher",
                                 rows_with_the_eager_tokens=f"{v['rows_with_the_eager_tokens']}/{v['rows']}"))
        free_memory(device)
    if "vllm" in single:  # the GPU question: vLLM against transformers, alone and at 16

        def tokens_per_second(serving: dict, n: int) -> dict:
            return (serving["one_at_a_time"] if n == 1 else serving["concurrent"][n])["tokens_per_second_figure"]

        for n in (1, 16):
            rows.append(row("chat", name, {"concurrent": n, "max_tokens": tokens},
                             ("transformers", tokens_per_second(single["transformers"], n)),
                             ("vllm", tokens_per_second(single["vllm"], n)), "tokens_per_second", "higher"))
    return rows


def fleet_rows(device: str, name: str, tiny: bool, tmp: Path, peak: float, configs: Path,
               asked: tuple[str, ...]) -> list[dict]:
    from workers.bench.fleet import run_fleet_bench

    redis_url = Settings().effective_redis_url
    jobs, gpu, upload = (6, 0.1, 0.05) if tiny else (20, 1.0, 0.2)
    size = 256 if tiny else 1024
    runs = [run_fleet_bench(jobs=jobs, gpu_seconds=gpu, upload_latency=upload, callback_latency=0.05,
                            redis_url=redis_url, size=size) for _ in range(MIN_SAMPLES)]

    def wall(mode: str, of: list[dict]) -> dict:
        return figure(run[mode]["wall_seconds"] for run in of)

    rows = [row("fleet", name, {"jobs": jobs, "gpu_seconds_per_image": gpu, "upload_latency_s": upload,
                                 "engine": "sim"},
                 ("one job at a time (claim, infer, upload, call back)", wall("serial", runs)),
                 ("the runtime (claim ahead, deliver behind)", wall("pipelined", runs)), "wall_seconds",
                 "lower", gpu_busy=runs[-1]["pipelined"]["gpu_busy_fraction"],
                 baseline_gpu_busy=runs[-1]["serial"]["gpu_busy_fraction"])]
    publishing = [run_fleet_bench(jobs=2 if tiny else 16, gpu_seconds=0.25, upload_latency=0.5, callback_latency=0.05,
                                  redis_url=redis_url, size=size, images=6, modes=("pipelined",))
                  for _ in range(MIN_SAMPLES)]
    last = publishing[-1]
    rows.append(row("fleet", name, {"jobs": last["jobs"], "images_per_job": 6, "gpu_seconds_per_image": 0.25,
                                     "upload_latency_s": 0.5, "engine": "sim"},
                     ("the GPU time alone", last["gpu_seconds_total"]),  # set, not timed
                     ("the runtime, uploads behind the GPU", wall("pipelined", publishing)), "wall_seconds",
                     "lower", gpu_busy=last["pipelined"]["gpu_busy_fraction"]))
    return rows
