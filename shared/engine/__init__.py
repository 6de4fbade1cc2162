"""The engine contract, the bottom of the house: what an engine is (`contract`), the model-facing
inputs it is handed (`inputs`), and the one way a job fails on purpose (`errors`). Imports nothing
above it."""
