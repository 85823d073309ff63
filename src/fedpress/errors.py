"""Errors a user can act on. Each names what is wrong and what is allowed."""


class ConfigError(ValueError):
    """A configuration key or value that fedpress cannot run with."""


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked: it holds another run, has nothing to
    resume, or cannot be written. Raised before any data is loaded."""


class CheckpointError(ValueError):
    """A checkpoint that is damaged, truncated, or not a fedpress checkpoint. The run
    directory is left as it was."""
