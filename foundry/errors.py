"""User-facing errors.

A ``FoundryError`` is a problem with the user's input (a file, a key, a name). The CLI prints its
message as one line and exits non-zero, without a traceback: the message must say what is wrong
and where (file, line or record, key).
"""


class FoundryError(Exception):
    """Bad input from the user. The message is shown as-is, on one line."""


class DataError(FoundryError):
    """A data file is malformed: the message names the file and the line or record."""


class ConfigError(FoundryError):
    """A config key or value is wrong: the message names the key and what is allowed."""


class CheckpointError(FoundryError):
    """A checkpoint or model directory is missing, incomplete or incompatible."""
