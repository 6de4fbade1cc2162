"""`ConfigError`: a configuration that cannot make a worker (an unknown engine, no model, a model
folder of the wrong kind). The registry and the model checks raise it; the command line says it
in one line and exits 2, the serverless handler fails its start with it."""


class ConfigError(ValueError):
    """What is wrong with the configuration and what to do, in one line."""
