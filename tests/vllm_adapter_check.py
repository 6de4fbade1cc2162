"""Run by tests/test_vllm_adapter.py where the real vllm package imports (scripts/vllm-check-env.sh):
the adapter's calls checked against vLLM's own classes and signatures. Exits non-zero on a mismatch."""

import asyncio
import inspect

import vllm
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM

from workers.chat.generator import Request
from workers.chat.vllm_backend import VLLMGenerator, engine_args, sampling_params

# Each request gets its own SamplingParams, built by the real class (which validates its fields).
greedy = sampling_params(vllm, Request([1, 2, 3], max_tokens=9, temperature=0, top_p=0.5, seed=7), {5, 2}, 9)
sampled = sampling_params(vllm, Request([4], max_tokens=30, temperature=0.8, top_p=0.9, repetition_penalty=1.1,
                                        presence_penalty=0.3, frequency_penalty=-0.2, seed=None, ignore_eos=True),
                          set(), 20)
assert isinstance(greedy, SamplingParams) and isinstance(sampled, SamplingParams)
assert (greedy.temperature, greedy.top_p, greedy.seed, greedy.max_tokens) == (0.0, 1.0, 7, 9), greedy
assert greedy.stop_token_ids == [2, 5] and greedy.ignore_eos is False and greedy.detokenize is False
assert greedy.output_kind == RequestOutputKind.DELTA
assert (sampled.temperature, sampled.top_p, sampled.repetition_penalty) == (0.8, 0.9, 1.1), sampled
assert (sampled.presence_penalty, sampled.frequency_penalty, sampled.max_tokens) == (0.3, -0.2, 20), sampled
assert sampled.ignore_eos is True and sampled.seed is None and sampled.stop_token_ids == []

# The engine is started with arguments the real AsyncEngineArgs takes.
args = engine_args(vllm, "/models/qwen", "bfloat16", 8192, 0.8, 48, random_weights=True)
assert isinstance(args, AsyncEngineArgs)
assert (args.max_model_len, args.gpu_memory_utilization, args.max_num_seqs, args.load_format) == (8192, 0.8, 48, "dummy")
assert args.skip_tokenizer_init is True and engine_args(vllm, "/m", "bfloat16", None, 0.9, 8).load_format == "auto"
inspect.signature(AsyncLLM.from_engine_args).bind(args)

# The calls the adapter makes on AsyncLLM bind to its real signatures.
inspect.signature(AsyncLLM.generate).bind(object(), TokensPrompt(prompt_token_ids=[1, 2]), greedy, request_id="r1")
inspect.signature(AsyncLLM.abort).bind(object(), "r1")

# The adapter's reading of real RequestOutput deltas: tokens accumulate, the stop token is dropped.
def output(ids, finished, reason=None):
    return RequestOutput(request_id="k", prompt=None, prompt_token_ids=[1, 2, 3], prompt_logprobs=None,
                         outputs=[CompletionOutput(index=0, text="", token_ids=ids, cumulative_logprob=None,
                                                   logprobs=None, finish_reason=reason)], finished=finished)


class Engine:
    async def generate(self, prompt, params, request_id):
        assert prompt["prompt_token_ids"] == [1, 2, 3] and request_id == "k"
        for out in (output([10, 11], False), output([12], False), output([13, 5], True, "stop")):
            yield out


generator = VLLMGenerator.__new__(VLLMGenerator)  # no GPU here: the adapter without a started engine
generator.engine, generator.stop_ids, generator._running = Engine(), {5}, {"k": None}
generator.updates = __import__("queue").SimpleQueue()
asyncio.run(generator._follow("k", Request([1, 2, 3], max_tokens=8), greedy))
updates = generator.step()
assert [u.token_ids for u in updates] == [[10, 11], [12], [13]], updates
assert updates[-1].completion.token_ids == [10, 11, 12, 13] and updates[-1].completion.finish_reason == "stop"
assert updates[-1].completion.prompt_tokens == 3 and generator.active == 0
print("vllm adapter matches vllm", vllm.__version__ if hasattr(vllm, "__version__") else "?")
