"""CHAT_CUDA_GRAPHS (workers/chat/graphed_decode.py) on the CPU: decoding over the static slab gives
the tokens the eager decoder gives, while rows join, leave and outgrow their slab.

A CPU has no CUDA graphs: the capture is stood in for by rerunning the step on the slab's static
buffers (tests/test_cuda_graphs.py's `rerun_capture`), which is what a replay computes. The slab,
its mask, the padding rows, the column each step writes and the hand-back on every change of rows
are the real code; the graphs themselves run on a GPU (`bench chat --device cuda`).
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import workers.chat.graphed_decode as graphed_decode
from shared.ops.engine_settings import ChatSettings
from tests.test_cuda_graphs import rerun_capture
from workers.chat.generator import Request, TextGenerator
from workers.chat.graphed_decode import (
    GraphedDecoder,
    bucket_length,
    bucket_rows,
    decode_graphs_on,
    row_buckets,
)


@pytest.fixture(scope="module")
def model(tiny_chat):
    return AutoModelForCausalLM.from_pretrained(tiny_chat).eval(), AutoTokenizer.from_pretrained(tiny_chat)


def make(model, graphed: bool) -> TextGenerator:
    lm, tokenizer = model
    if not graphed:
        return TextGenerator(lm, tokenizer, "cpu")
    eager = TextGenerator(lm, tokenizer, "cpu")
    decoder = GraphedDecoder(lm, "cpu", eager._cache_arg, capture=rerun_capture)
    return TextGenerator(lm, tokenizer, "cpu", decoder=decoder)


def prompt(tokenizer, text: str) -> list[int]:
    templated = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                              add_generation_prompt=True)
    return tokenizer(templated, add_special_tokens=False).input_ids


def run_schedule(generator: TextGenerator, joins: dict[int, tuple[str, Request]], aborts: dict[int, str]):
    done = {}
    for step in range(200):
        if step in joins:
            generator.add(*joins[step])
        if step in aborts:
            generator.abort(aborts[step])
        for update in generator.step():
            if update.completion is not None:
                done[update.key] = update.completion.token_ids
        if step > max(joins) and generator.active == 0:
            break
    return done


def schedule(tokenizer):
    greedy = dict(temperature=0)
    return {0: ("long", Request(prompt(tokenizer, "tell me a much longer story about the sea " * 3), max_tokens=45,
                                **greedy)),
            3: ("short", Request(prompt(tokenizer, "hi"), max_tokens=5, **greedy)),
            6: ("sampled", Request(prompt(tokenizer, "x y z"), max_tokens=20, temperature=0.9, top_p=0.8, seed=5,
                                   repetition_penalty=1.3)),
            9: ("gone", Request(prompt(tokenizer, "to be cancelled"), max_tokens=30, **greedy)),
            11: ("late", Request(prompt(tokenizer, "a late arrival " * 5), max_tokens=12, **greedy))}


def test_graphed_steps_give_the_eager_tokens_while_rows_join_leave_and_outgrow_the_slab(model, monkeypatch):
    monkeypatch.setattr(graphed_decode, "LENGTH_STEP", 16)  # slabs of 16 columns: the batch outgrows several
    tokenizer = model[1]
    eager = run_schedule(make(model, False), schedule(tokenizer), {14: "gone"})
    generator = make(model, True)
    graphed = run_schedule(generator, schedule(tokenizer), {14: "gone"})
    assert graphed == eager
    assert len(graphed["long"]) == 45 and "gone" not in graphed
    decoder = generator.decoder
    assert decoder.replays > 40  # the decoding steps went through the slab...
    assert decoder.captures >= 3  # ...in several (rows, length) buckets, captured once each
    assert not decoder.holding and generator.cache is None


def test_one_capture_serves_a_bucket_until_the_rows_change(model):
    tokenizer = model[1]
    generator = make(model, True)
    generator.add("a", Request(prompt(tokenizer, "hello there"), max_tokens=30, temperature=0))
    generator.add("b", Request(prompt(tokenizer, "hello again, friend"), max_tokens=30, temperature=0))
    for _ in range(20):
        generator.step()
    decoder = generator.decoder
    assert decoder.captures == 1 and decoder.replays == 19  # the first step was the prefill
    assert decoder.holding and decoder.active.rows == 2
    while generator.active:
        generator.step()
    assert not decoder.holding


def test_buckets_and_the_switch():
    assert [bucket_rows(n) for n in (1, 3, 16, 17, 64)] == [1, 4, 16, 32, 64]
    assert row_buckets(64) == [1, 2, 4, 8, 16, 32, 64] and row_buckets(5) == [1, 2, 4, 8]
    assert bucket_length(0) == 256 and bucket_length(255) == 256 and bucket_length(256) == 512
    with pytest.raises(ValueError, match="CHAT_CUDA_GRAPHS=true needs a CUDA GPU"):
        decode_graphs_on(ChatSettings(cuda_graphs=True), "cpu")
    assert decode_graphs_on(ChatSettings(), "cuda") and not decode_graphs_on(ChatSettings(), "cpu")  # auto
    assert not decode_graphs_on(ChatSettings(cuda_graphs=False), "cuda")


def test_padding_rows_never_reach_the_caller(model):
    """Three rows in a bucket of four: the fourth row's logits are dropped, and it produces no NaN."""
    tokenizer = model[1]
    generator = make(model, True)
    for key in ("a", "b", "c"):
        generator.add(key, Request(prompt(tokenizer, f"row {key}"), max_tokens=4, temperature=0))
    generator.step()
    generator.step()
    slab = generator.decoder.active
    assert slab.rows == 4 and torch.isfinite(slab.logits).all()


def test_a_capture_that_fails_hands_the_cache_back_and_decoding_goes_on_eagerly(model):
    tokenizer = model[1]
    requests = {0: ("a", Request(prompt(tokenizer, "one more story"), max_tokens=20, temperature=0)),
                2: ("b", Request(prompt(tokenizer, "and another"), max_tokens=10, temperature=0))}
    eager = run_schedule(make(model, False), requests, {})

    def failing_capture(run, pool):
        run()  # a warm-up run writes past the last column, as cuda_capture's do
        raise RuntimeError("operation not permitted when stream is capturing")

    lm, tokenizer = model
    generator = TextGenerator(lm, tokenizer, "cpu")
    generator.decoder = GraphedDecoder(lm, "cpu", generator._cache_arg, capture=failing_capture)
    assert run_schedule(generator, requests, {}) == eager
    assert generator.decoder is None  # eager from then on


def test_the_engine_captures_every_batch_bucket_at_its_warm_up(tiny_chat, monkeypatch):
    import workers.chat.engine as chat_engine

    class CPUDecoder(GraphedDecoder):
        def __init__(self, model, device, cache_arg):
            super().__init__(model, device, cache_arg, capture=rerun_capture)

    monkeypatch.setattr(graphed_decode, "GraphedDecoder", CPUDecoder)
    monkeypatch.setattr(chat_engine, "decode_graphs_on", lambda config, device: True)
    engine = chat_engine.ChatEngine(str(tiny_chat), ChatSettings(max_batch=5, backend="transformers"))
    engine.setup("cpu")
    decoder = engine.models["qwen_instruct"].generator.decoder
    assert sorted(rows for rows, _ in decoder.slabs) == [1, 2, 4, 8] and decoder.captures == 4


def test_slabs_past_the_memory_budget_evict_the_least_recently_used(model, monkeypatch):
    monkeypatch.setattr(graphed_decode, "LENGTH_STEP", 16)
    lm, tokenizer = model
    eager = run_schedule(make(model, False), schedule(tokenizer), {14: "gone"})
    generator = TextGenerator(lm, tokenizer, "cpu")
    decoder = GraphedDecoder(lm, "cpu", generator._cache_arg, capture=rerun_capture)
    decoder.max_bytes = decoder._slab_bytes(8, 64)  # room for about one slab
    generator.decoder = decoder
    assert run_schedule(generator, schedule(tokenizer), {14: "gone"}) == eager
    assert decoder._bytes() <= decoder.max_bytes or len(decoder.slabs) == 1  # a slab larger than the budget alone
    assert decoder.captures > len(decoder.slabs) + 2  # evicted slabs were captured again when needed


def test_a_graph_whose_replay_disagrees_with_eager_is_caught_and_decoding_goes_on_eagerly(model):
    from tests.test_cuda_graphs import stale_capture

    lm, tokenizer = model
    requests = {0: ("a", Request(prompt(tokenizer, "one more story"), max_tokens=20, temperature=0)),
                2: ("b", Request(prompt(tokenizer, "and another"), max_tokens=10, temperature=0))}
    eager = run_schedule(make(model, False), requests, {})
    generator = TextGenerator(lm, tokenizer, "cpu")
    generator.decoder = GraphedDecoder(lm, "cpu", generator._cache_arg, capture=stale_capture)
    assert run_schedule(generator, requests, {}) == eager
    assert generator.decoder is None


def test_the_bench_compares_the_graphed_decoder_with_itself_eager(model):
    """`bench chat` on CUDA reports graphs against the same decoder without them, and how many rows'
    greedy tokens agree (on a GPU bf16 ties may part them; here, float32 and a stand-in, all do)."""
    from workers.bench.chat import versus_transformers

    generator = make(model, True)
    report = versus_transformers(generator, rows=3, max_tokens=6, prompt_tokens=0)
    assert report["rows_with_the_eager_tokens"] == 3 and report["eager_decoder_tokens_per_second"] > 0
    assert "eager_decoder_tokens_per_second" not in versus_transformers(make(model, False), 2, 4, 0)


def test_a_transformers_whose_static_cache_works_otherwise_decodes_eagerly(model, monkeypatch, capfd):
    lm, tokenizer = model
    assert graphed_decode.static_cache_fits()  # the transformers the suite runs on
    monkeypatch.setattr(graphed_decode, "static_cache_fits", lambda: False)
    generator = TextGenerator(lm, tokenizer, "cpu", cuda_graphs=True)  # would need CUDA if it were built
    assert generator.decoder is None
    assert "chat_cuda_graphs_unsupported" in capfd.readouterr().err


def test_any_failure_inside_the_decoder_hands_the_cache_back_and_goes_eager(model):
    lm, tokenizer = model
    requests = {0: ("a", Request(prompt(tokenizer, "one more story"), max_tokens=20, temperature=0)),
                2: ("b", Request(prompt(tokenizer, "and another"), max_tokens=10, temperature=0))}
    eager = run_schedule(make(model, False), requests, {})
    generator = make(model, True)
    calls = {"n": 0}
    real_step = generator.decoder.step

    def flaky(last, positions):  # fails on the fifth decoding step, after the slab holds the cache
        calls["n"] += 1
        if calls["n"] == 5:
            raise AttributeError("'StaticLayer' object has no attribute 'cumulative_length'")
        return real_step(last, positions)

    generator.decoder.step = flaky
    assert run_schedule(generator, requests, {}) == eager
    assert generator.decoder is None and calls["n"] == 5
