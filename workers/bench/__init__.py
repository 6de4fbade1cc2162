"""The benchmarks: `all_engines` (bench all), `fleet`, `scale`, `cold_start`, each engine's
(`sdxl`, `wan`, `chat`, `chat_load`), their shared timing (`measure`) and report (`report`), and the
stand-in backend they and the tests run against (`local_backend`). Production never imports them."""
