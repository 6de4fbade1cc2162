"""Hostile queue elements, generated (Hypothesis, fixed seed): none is lost, none is answered twice,
no answer goes to an id no element carries, and no payload's fault leaves a traceback.

The decode rules are checked on many elements in-process; then generated batches of both eras go
through the real Redis and a sim worker, whose callbacks and dead-letter list are the evidence.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared.decode.contract import parse_job
from shared.decode.presets import load_presets
from shared.engine.errors import JobError
from shared.ops.bounded_json import JsonRefused, loads, nesting_depth, top_level_string
from shared.ops.numbers import NumberRefused, read_number
from shared.ops.settings import DEFAULT_PRESETS
from shared.source import keys
from shared.source.admin import dead_letters
from shared.source.element import element_job_id
from shared.source.producer import push_raw
from tests.conftest import TEST_REDIS_URL
from tests.helpers import running_worker, wait_until
from tests.hostile import deep, elements, hostile_values

PRESETS = load_presets(str(DEFAULT_PRESETS))
PLACEHOLDER = "job-placeholder-0000"
FIXED = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


@settings(FIXED, max_examples=400)
@given(st.sampled_from(["v1", "v2"]).flatmap(lambda era: elements(era, str(uuid.uuid4()))))
def test_reading_any_element_raises_a_job_error_under_the_id_it_carries(element):
    """The decode rule the claimer applies: a `JobError` or a job, and the id reported is the one
    the element's top level carries (None: the dead-letter list)."""
    try:
        job = parse_job(element.text, PRESETS)
    except JobError as exc:
        assert (exc.job_id or element_job_id(element.text)) == element.job_id, exc.message
        assert exc.error_type != "internal_error" and exc.message
        return
    assert job.id == element.job_id
    assert 0 <= job.seed <= 2**53 and 1 <= job.num_images <= 6 and math.isfinite(job.guidance_scale)


@settings(FIXED, max_examples=300)
@given(hostile_values, st.booleans())
def test_the_number_reader_returns_a_finite_number_in_range_or_says_why(value, whole):
    try:
        number = read_number("seed", value, whole=whole, low=0, high=2**53)
    except NumberRefused as exc:
        assert str(exc).startswith("seed") and len(str(exc)) < 200
        return
    assert math.isfinite(number) and 0 <= number <= 2**53 and (not whole or isinstance(number, int))


def test_bounded_json_refuses_depth_and_long_numbers_before_parsing():
    assert nesting_depth('{"a": "[[[[", "b": [[1]]}') == 3  # brackets inside strings do not count
    with pytest.raises(JsonRefused, match="nested 100000 levels deep"):
        loads(deep(100_000, "array").text)
    with pytest.raises(JsonRefused, match="a number 5000 characters long"):
        loads('{"seed": ' + "9" * 5000 + "}")
    with pytest.raises(JsonRefused, match="bytes, the limit is 10"):
        loads('{"a": "0123456789"}', max_bytes=10)
    assert loads('{"seed": 1e400}')["seed"] == math.inf  # non-finite values are the number reader's to refuse
    assert loads(deep(32, "object").text)  # the limit itself is allowed


@pytest.mark.parametrize("text, expected", [
    ('{"id": "abc", "x": ' + deep(5000, "array").text + "}", "abc"),
    ('{"config": {"id": "inner"}, "id": "outer"', "outer"),  # a nested id is never taken; broken JSON is read
    ('["{\\"job_id\\": \\"in-text\\", \\"x\\": [[["]', "in-text"),  # v2: an array holding the text
    ('{"id": "../etc", "x": 1}', None),
    ('{"id": "a", "id": "b"}', "b"),  # a repeated key: the last one, as json.loads reads it
    ('{"a": {"id": "deep"}}', None),
    ('"{\\"id\\": \\"doubly\\"}"', "doubly"),
    ("not json", None),
])
def test_the_job_id_is_read_from_elements_that_cannot_be_parsed(text, expected):
    assert element_job_id(text) == expected
    assert top_level_string(text, ("id", "job_id"), lambda v: True) in (expected, "../etc")


@pytest.mark.parametrize("era", ["v1", "v2"])
def test_generated_hostile_batches_through_redis_and_a_worker_are_each_answered_exactly_once(
        era, make_settings, redis_client, backend, capfd):
    sent, texts = [], {}
    raw_client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(TEST_REDIS_URL))  # bytes in, as stored

    @settings(FIXED, max_examples=4, phases=[Phase.generate])  # shrinking through a worker would take minutes
    @given(st.lists(elements(era, PLACEHOLDER), min_size=30, max_size=30))
    def batch(generated):
        for element in generated:
            job_id = str(uuid.uuid4())  # fresh per element: generated ids could repeat across examples
            data = element.data.replace(PLACEHOLDER.encode(), job_id.encode())
            sent.append(element.job_id and job_id)
            texts[job_id] = element.text[:300]
            push_raw(raw_client, era, element.queue, data)
        with_id = sum(job_id is not None for job_id in sent)
        try:
            wait_until(lambda: len(backend.terminal_callbacks()) >= with_id
                       and len(dead_letters(redis_client)) >= len(sent) - with_id, 60)
        except TimeoutError:
            answered = {c["job_id"] for c in backend.terminal_callbacks()}
            lost = [texts[j] for j in sent if j is not None and j not in answered]
            raise AssertionError(f"{len(lost)} elements unanswered, {len(dead_letters(redis_client))} dead "
                                 f"letters of {len(sent) - with_id} expected; first lost: {lost[:2]}") from None

    with running_worker(make_settings(contract=era)) as worker:
        batch()
        wait_until(lambda: worker.state == "ready", 10)
        answered = Counter(c["job_id"] for c in backend.terminal_callbacks())
        carried = {job_id for job_id in sent if job_id is not None}
        assert set(answered) == carried, "answers for ids no element carries, or elements never answered"
        assert max(answered.values()) == 1, [job_id for job_id, n in answered.items() if n > 1]
        assert len(dead_letters(redis_client)) == sum(job_id is None for job_id in sent)
        failed = [c for c in backend.terminal_callbacks() if c["status"] == "failed"]
        assert failed and all(c["error_message"] and c["metadata"]["error_type"] != "internal_error" for c in failed)
        assert all(redis_client.llen(keys.processing(worker.worker_id, q)) == 0 for q in keys.JOB_QUEUES)
    logged = capfd.readouterr().err
    assert "Traceback" not in logged and '"job_id": ""' not in logged
    assert len(sent) == 120
