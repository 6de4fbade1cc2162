"""The benchmarks: `all_engines` (bench all; the chat and fleet rows in `service_rows`), `fleet`,
`scale`, `cold_start`, each engine's (`sdxl`, `wan`, `chat`, `chat_load`, `step_profile`), their
shared timing (`measure`), report (`report`) and comparison (`compare`), and the stand-in backend
they and the tests run against (`local_backend`). Production never imports them."""


class BenchInputError(ValueError):
    """Input a benchmark cannot use (a report it cannot read or pair): the command line says it in
    one line as a usage mistake (exit 2)."""
