"""The transformers backend's continuous batching and on-device sampling, on a tiny random Qwen2."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from workers.chat.generator import Request, TextGenerator
from workers.chat.sampling import BatchSampler, RowSampling


@pytest.fixture(scope="module")
def model(tiny_chat):
    return AutoModelForCausalLM.from_pretrained(tiny_chat).eval(), AutoTokenizer.from_pretrained(tiny_chat)


@pytest.fixture
def generator(model):
    return TextGenerator(*model, "cpu")  # a fresh batch state per test


def prompt(generator, text: str) -> list[int]:
    templated = generator.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                        add_generation_prompt=True)
    return generator.tokenizer(templated, add_special_tokens=False).input_ids


def alone(generator, request: Request) -> list[int]:
    return generator.generate([request])[0].token_ids


def test_rows_that_join_and_leave_mid_batch_decode_what_they_would_alone(generator):
    long = Request(prompt(generator, "tell me a much longer story about the sea, please " * 3), max_tokens=40,
                   temperature=0)
    short = Request(prompt(generator, "hi"), max_tokens=6, temperature=0)
    sampled = Request(prompt(generator, "x y z"), max_tokens=12, temperature=0.9, top_p=0.8, seed=5,
                      repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2)
    joins = {0: ("long", long), 4: ("short", short), 7: ("sampled", sampled)}
    done, widths = {}, []
    for step in range(60):
        if step in joins:
            generator.add(*joins[step])
        for update in generator.step():
            if update.completion is not None:
                done[update.key] = update.completion.token_ids
        if generator.mask is not None:
            widths.append(generator.mask.shape[1])
        if len(done) == 3:
            break
    assert generator.active == 0 and generator.cache is None
    assert done == {"long": alone(generator, long), "short": alone(generator, short),
                    "sampled": alone(generator, sampled)}
    assert len(done["long"]) == 40 and len(done["short"]) == 6


def test_padding_no_row_needs_is_trimmed_when_a_row_leaves(generator):
    big = Request(prompt(generator, "a long prompt " * 20), max_tokens=3, temperature=0)
    small = Request(prompt(generator, "hi"), max_tokens=30, temperature=0)
    generator.add("big", big)
    generator.add("small", small)
    generator.step()
    assert generator.mask.shape[1] == len(big.prompt_ids) + 0  # right-aligned under the longest prompt
    for _ in range(3):
        generator.step()  # the big row has left
    assert [r.key for r in generator.rows] == ["small"]
    assert generator.mask.shape[1] == len(small.prompt_ids) + 3 and bool(generator.mask.all())
    assert all(layer.keys.shape[2] == generator.mask.shape[1] for layer in generator.cache.layers)


def test_an_aborted_row_leaves_and_the_others_go_on(generator):
    keep = Request(prompt(generator, "keep going"), max_tokens=10, temperature=0)
    generator.add("keep", keep)
    generator.add("drop", Request(prompt(generator, "stop me"), max_tokens=10, temperature=0))
    generator.step()
    generator.abort("drop")
    assert [r.key for r in generator.rows] == ["keep"]
    tokens = list(generator.rows[0].produced)
    while generator.active:
        for update in generator.step():
            tokens += update.token_ids
    assert tokens == alone(generator, keep)


def test_prefill_computes_logits_for_the_last_position_only(generator):
    shapes = []
    hook = generator.model.lm_head.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    try:
        generator.generate([Request(prompt(generator, "a prompt of some length"), max_tokens=2, temperature=0),
                            Request(prompt(generator, "hi"), max_tokens=2, temperature=0)])
    finally:
        hook.remove()
    assert shapes[0][:2] == (2, 1)  # prefill: 2 rows, 1 position, not every prompt position
    assert all(s[1] == 1 for s in shapes)


def test_greedy_equals_transformers_generate_and_ends_at_eos(generator):
    request = Request(prompt(generator, "tell me about the sea"), max_tokens=12, temperature=0)
    ids = torch.tensor([request.prompt_ids])
    reference = generator.model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    ours = generator.generate([request])[0]
    eos = generator.tokenizer.eos_token_id
    expected = reference[:reference.index(eos)] if eos in reference else reference
    assert ours.token_ids == expected and ours.finish_reason == ("stop" if eos in reference else "length")
    fixed = generator.generate([Request(request.prompt_ids, max_tokens=12, temperature=0, ignore_eos=True)])[0]
    assert len(fixed.token_ids) == 12  # ignore_eos: exactly max_tokens (benchmarks)


def test_penalties_match_transformers_logits_processors():
    torch.manual_seed(0)
    vocab, prompt_ids = 50, [3, 7, 7, 11]
    sampler = BatchSampler(vocab, "cpu")
    sampler.add([(RowSampling(temperature=0, repetition_penalty=1.5), prompt_ids, 8),
                 (RowSampling(temperature=0, presence_penalty=0.7, frequency_penalty=0.3), prompt_ids, 8),
                 (RowSampling(temperature=0), prompt_ids, 8)])
    history = [list(prompt_ids) for _ in range(3)]
    answers: list[list[int]] = [[], [], []]
    for _ in range(6):
        logits = torch.randn(3, vocab)
        expected = []
        rep = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([history[0]]), logits[0:1].clone())[0]
        expected.append(int(rep.argmax()))
        counts = torch.bincount(torch.tensor(answers[1], dtype=torch.long), minlength=vocab).float()
        expected.append(int((logits[1] - counts * 0.3 - (counts > 0) * 0.7).argmax()))
        expected.append(int(logits[2].argmax()))
        chosen = sampler.sample(logits).tolist()
        assert chosen == expected
        for row, token in enumerate(chosen):
            history[row].append(token)
            answers[row].append(token)


def test_sampling_follows_the_distribution_with_top_p_and_per_row_seeds():
    vocab, rows = 6, 6000
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.04, 0.01])).repeat(rows, 1)
    plain = BatchSampler(vocab, "cpu")
    plain.add([(RowSampling(temperature=1.0, top_p=1.0, seed=i), [0], 1) for i in range(rows)])
    frequencies = torch.bincount(plain.sample(logits), minlength=vocab).float() / rows
    assert torch.allclose(frequencies, torch.softmax(logits[0], -1), atol=0.025)
    nucleus = BatchSampler(vocab, "cpu")
    nucleus.add([(RowSampling(temperature=1.0, top_p=0.65, seed=i), [0], 1) for i in range(rows)])
    chosen = nucleus.sample(logits)
    assert set(chosen.tolist()) == {0, 1}  # 0.4 + 0.3 reaches 0.65: nothing past the nucleus
    again = BatchSampler(vocab, "cpu")
    again.add([(RowSampling(temperature=1.0, top_p=0.65, seed=i), [0], 1) for i in reversed(range(rows))])
    assert again.sample(logits).tolist() == list(reversed(chosen.tolist()))  # each seed its own draw, any order


def test_a_prompt_that_fills_the_context_is_refused_by_the_generator(generator):
    with pytest.raises(ValueError, match="leaves no room"):
        generator.add("x", Request([1] * generator.max_context, max_tokens=4))
