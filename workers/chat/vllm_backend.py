"""vLLM's async engine as the chat generator (the default on CUDA when vllm is installed).

The same interface as workers/chat/generator.py (`add`, `abort`, `step`, `active`, `reset`,
`generate`), so the chat engine's loop is the same for both: vLLM schedules the rows itself
(continuous batching, paged KV cache, chunked prefill), and this adapter maps each `Request` to
its own `SamplingParams` and brings the tokens back. `AsyncLLM` lives on an event loop of its
own thread; `step()` returns the updates that arrived, waiting a few milliseconds at most, so
the runtime's loop keeps admitting new requests while vLLM works.

Token ids in, token ids out: vLLM never tokenizes or detokenizes here (`skip_tokenizer_init`),
the service does both, and the stop tokens are passed explicitly. Optional: vLLM pins its own
CUDA build of torch, so it is never installed in CI (`pip install '.[vllm]'`, Dockerfile.chat).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Hashable
from typing import Any

from workers.chat.generator import Completion, Request, Update

STEP_WAIT_SECONDS = 0.005  # how long step() waits for vLLM: short, so new requests join quickly


def sampling_params(vllm_module, request: Request, stop_ids: set[int], budget: int):
    """One request's `vllm.SamplingParams` (tested against the real class)."""
    from vllm.sampling_params import RequestOutputKind

    greedy = request.temperature <= 0
    return vllm_module.SamplingParams(
        max_tokens=budget, temperature=0.0 if greedy else request.temperature,
        top_p=1.0 if greedy else request.top_p, repetition_penalty=request.repetition_penalty,
        presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
        seed=request.seed, ignore_eos=request.ignore_eos, stop_token_ids=sorted(stop_ids),
        detokenize=False, output_kind=RequestOutputKind.DELTA,
    )


def engine_args(vllm_module, path: str, dtype: str, max_context: int | None, gpu_memory_utilization: float,
                max_rows: int, random_weights: bool = False):
    """The `AsyncEngineArgs` the worker starts vLLM with (tested against the real class)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(model=path, dtype=dtype, max_model_len=max_context,
                           gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_rows,
                           skip_tokenizer_init=True, disable_log_stats=True,
                           load_format="dummy" if random_weights else "auto")


class VLLMGenerator:
    def __init__(self, path: str, tokenizer, dtype: str, max_context: int | None, gpu_memory_utilization: float,
                 max_rows: int = 64, stop_ids: set[int] | None = None, random_weights: bool = False):
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError("CHAT_BACKEND=vllm but the vllm package is not installed "
                               "(pip install 'ourvidz-workers[vllm]')") from exc
        from vllm.v1.engine.async_llm import AsyncLLM

        self._vllm = vllm
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids if stop_ids is not None else {tokenizer.eos_token_id})
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="vllm-loop", daemon=True).start()
        args = engine_args(vllm, path, dtype, max_context, gpu_memory_utilization, max_rows, random_weights)
        self.engine = self._on_loop(self._start(AsyncLLM, args))
        self.max_context = max_context or int(self.engine.model_config.max_model_len)
        self.updates: queue.SimpleQueue = queue.SimpleQueue()
        self._running: dict[Hashable, asyncio.Future] = {}

    @staticmethod
    async def _start(async_llm, args):
        return async_llm.from_engine_args(args)

    def _on_loop(self, coroutine, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def active(self) -> int:
        return len(self._running)

    def add(self, key: Hashable, request: Request) -> None:
        budget = min(request.max_tokens, self.max_context - len(request.prompt_ids))
        if budget < 1 or not request.prompt_ids:
            raise ValueError(f"a prompt of {len(request.prompt_ids)} tokens leaves no room in a "
                             f"{self.max_context}-token context")
        params = sampling_params(self._vllm, request, set() if request.ignore_eos else self.stop_ids, budget)
        self._running[key] = asyncio.run_coroutine_threadsafe(self._follow(key, request, params), self.loop)

    async def _follow(self, key: Hashable, request: Request, params) -> None:
        from vllm.inputs import TokensPrompt

        started, produced = time.perf_counter(), []
        try:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=request.prompt_ids), params,
                                                  request_id=str(key)):
                best = out.outputs[0]
                new = list(best.token_ids)
                if out.finished and best.finish_reason == "stop" and new and new[-1] in self.stop_ids:
                    new.pop()  # the stop token is not part of the reply
                produced += new
                done = None
                if out.finished:
                    done = Completion(list(produced), "stop" if best.finish_reason == "stop" else "length",
                                      len(request.prompt_ids), time.perf_counter() - started)
                self.updates.put(Update(key, new, done))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one request failed inside vLLM: that row ends with the error
            self.updates.put(Update(key, [], error=exc))

    def abort(self, key: Hashable) -> None:
        running = self._running.pop(key, None)
        if running is not None:
            running.cancel()  # closing vLLM's generator aborts the request inside the engine
            asyncio.run_coroutine_threadsafe(self.engine.abort(str(key)), self.loop)

    def reset(self) -> None:
        for key in list(self._running):
            self.abort(key)

    def step(self) -> list[Update]:
        try:
            updates = [self.updates.get(timeout=STEP_WAIT_SECONDS)]
        except queue.Empty:
            return []
        while True:
            try:
                updates.append(self.updates.get_nowait())
            except queue.Empty:
                break
        live = [u for u in updates if u.key in self._running]  # a row aborted meanwhile says nothing more
        for update in live:
            if update.completion is not None or update.error is not None:
                self._running.pop(update.key, None)
        return live

    def generate(self, requests: list[Request]) -> list[Completion]:
        """All of `requests` to the end, together (warm-up, benchmarks); not while serving."""
        for index, request in enumerate(requests):
            self.add(index, request)
        done: dict[Hashable, Completion] = {}
        while len(done) < len(requests):
            for update in self.step():
                if update.error is not None:
                    raise update.error
                if update.completion is not None:
                    done[update.key] = update.completion
        return [done[i] for i in range(len(requests))]
