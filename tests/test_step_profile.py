"""`bench chat`'s decoding profile (workers/bench/step_profile.py) on the CPU: one stream decoded
under torch's profiler, reported per token, with nothing of the profiler's own on the terminal."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.bench.step_profile import _busy_us, decoding_step_profile, summary
from workers.chat.generator import TextGenerator


def lighthouse(generator) -> list[int]:
    text = generator.tokenizer.apply_chat_template([{"role": "user", "content": "Describe a lighthouse."}],
                                                   tokenize=False, add_generation_prompt=True)
    return generator.tokenizer(text, add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def generator(tiny_chat):
    return TextGenerator(AutoModelForCausalLM.from_pretrained(tiny_chat).eval(),
                         AutoTokenizer.from_pretrained(tiny_chat), "cpu")


def test_one_stream_is_profiled_per_token_and_the_profiler_prints_nothing(generator, capfd):
    profile = decoding_step_profile(generator, lighthouse(generator), max_tokens=8)
    assert profile["tokens"] == 8 and profile["wall_ms_per_token"] > 0
    assert profile["device_busy_ms_per_token"] is None  # no device kernels on a CPU
    # a decoding step of the tiny model runs hundreds of operators; every one of them is counted
    assert profile["operators_per_token"] > 50
    top = profile["top"]
    assert top and all(entry["operator"].startswith("aten::") for entry in top)
    assert [e["ms_per_token"] for e in top] == sorted((e["ms_per_token"] for e in top), reverse=True)
    assert 0 < sum(e["share"] for e in top) <= 1 + 6 * 0.0005  # shares of the whole, each rounded to 0.001
    assert any(e["operator"] in ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul") for e in top)
    assert "8 tokens" in summary(profile) and "operators a token" in summary(profile)
    assert "USDT" not in capfd.readouterr().err  # kineto's start/stop lines were held back from fd 2
    assert generator.active == 0  # the generator is left idle for whatever comes next


def test_a_profile_that_fails_is_reported_not_raised(generator, monkeypatch):
    def broken(requests):
        generator.add("cut off", requests[0])  # a row left behind, as a failure mid-decoding leaves one
        raise RuntimeError("no profiler today")

    monkeypatch.setattr(generator, "generate", broken)
    profile = decoding_step_profile(generator, lighthouse(generator), max_tokens=4)
    assert profile == {"error": "RuntimeError: no profiler today"}
    assert generator.active == 0  # and the generator was reset for whoever uses it next
    assert summary(profile) == "decoding step profile failed: RuntimeError: no profiler today"


def test_the_device_busy_time_counts_overlapping_kernels_once():
    assert _busy_us([]) == 0
    assert _busy_us([(0, 10), (20, 25)]) == 15
    assert _busy_us([(0, 10), (5, 12), (11, 14), (30, 31)]) == 15  # 0-14 once, then 30-31
    assert _busy_us([(5, 12), (0, 20)]) == 20  # one inside another
