"""Errors a user can act on. Jobs print these without a traceback and exit with status 2."""


class CorrhashError(Exception):
    """Base class: the message names the file, row or option at fault."""


class DataError(CorrhashError):
    """Raw input or prepared shards are missing, unreadable or malformed."""


class ConfigError(CorrhashError):
    """An option or configuration value is invalid."""
