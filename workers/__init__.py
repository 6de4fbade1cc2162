"""The model workers (one module per engine) and the `ourvidz-worker` command line."""
