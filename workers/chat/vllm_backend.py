"""vLLM as the chat worker's generator (CHAT_BACKEND=vllm): the same `generate(requests)` contract.

vLLM schedules the rows of a batch itself (continuous batching, paged KV cache); this adapter
only maps each `Request` to vLLM's per-prompt `SamplingParams` and back. Optional: vLLM is never
installed in CI (it needs CUDA), and the fleet runs without it.
"""

from __future__ import annotations

import time

from workers.chat.generator import Completion, Request


class VLLMGenerator:
    def __init__(self, path: str, tokenizer, dtype: str, max_context: int | None, gpu_memory_utilization: float):
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError("CHAT_BACKEND=vllm but the vllm package is not installed (pip install vllm)") from exc
        self._vllm = vllm
        self.tokenizer = tokenizer
        self.llm = vllm.LLM(model=path, tokenizer=path, dtype=dtype, max_model_len=max_context,
                            gpu_memory_utilization=gpu_memory_utilization)
        self.max_context = max_context or int(self.llm.llm_engine.model_config.max_model_len)
        self.stop_ids: set[int] | None = None  # None: the model's own EOS; set() ignores EOS (benchmarks)

    def _params(self, r: Request):
        return self._vllm.SamplingParams(
            max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p if r.temperature > 0 else 1.0,
            repetition_penalty=r.repetition_penalty, presence_penalty=r.presence_penalty, seed=r.seed,
            ignore_eos=self.stop_ids == set(),
        )

    def generate(self, requests: list[Request]) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        prompts = [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests]
        outputs = self.llm.generate(prompts, sampling_params=[self._params(r) for r in requests], use_tqdm=False)
        seconds = time.perf_counter() - started
        completions = []
        for r, out in zip(requests, outputs, strict=True):
            best = out.outputs[0]
            completions.append(Completion(list(best.token_ids), "stop" if best.finish_reason == "stop" else "length",
                                          len(r.prompt_ids), seconds))
        return completions
