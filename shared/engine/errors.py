"""The one way a job fails on purpose: `JobError`, whose `error_type` goes to the callback."""

from __future__ import annotations


class JobError(Exception):
    """A job that cannot be done as asked. `error_type` goes to the callback's metadata;
    `retryable` says whether another attempt (here or on another worker) may succeed."""

    def __init__(self, error_type: str, message: str, *, job_id: str | None = None, retryable: bool = False):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.job_id = job_id
        self.retryable = retryable


class BadPayload(JobError):
    """The payload itself is unusable; `job_id` is set when an id could still be read from it.

    `invalid_payload`: a required field is missing or unsafe. `bad_payload`: the element could not
    be read at all (not JSON, too large, too deep, a number too long, or anything reading it raised).
    """

    def __init__(self, message: str, job_id: str | None = None, error_type: str = "invalid_payload"):
        super().__init__(error_type, message, job_id=job_id)
