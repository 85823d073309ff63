"""Errors a user can act on. Each names what is wrong and what is allowed."""


class ConfigError(ValueError):
    """A configuration key or value that fedpress cannot run with."""
