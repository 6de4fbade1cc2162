"""Deliver, behind the GPU: outputs encoded (`media`), published to storage (`publish`, `storage`),
the callback sent or kept in the outbox (`callback`, `outbox`), and the one `Delivery` that reports
a job's outcome exactly once; `announce` tells the backend where a worker listens."""
