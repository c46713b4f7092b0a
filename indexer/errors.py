"""The errors the library raises: each message is one line a person can act on (the CLI prints it as is)."""

from __future__ import annotations


class LookalikeError(Exception):
    """An error whose message a person can act on (the CLI prints it as one line, exit status 1)."""


class ModelMismatchError(LookalikeError):
    """The stored vectors were made by another model or masking; re-embedding is needed to change it."""


class CollectionBusyError(LookalikeError):
    """Another process holds the collection's write lock."""


class DamagedDatabaseError(LookalikeError):
    """The metadata database file is damaged; the message says which and how to recover."""


class DatabaseUnavailableError(LookalikeError):
    """The metadata database cannot be used: its driver is not installed, its server cannot be reached, or the
    server refuses the login. The message names the database (password hidden) and what to do."""


class Interrupted(LookalikeError):
    """A long run was interrupted (Ctrl-C); what it finished is kept and the same command resumes it."""


class SettingsError(LookalikeError, ValueError):
    """A setting cannot be used as given: a value out of range, a checkpoint of another kind of network, a
    model or segmenter that cannot be built. The message says which and why."""


class DataError(LookalikeError, ValueError):
    """Input data (a labelled folder, a pairs file) cannot be used as given; the message says why."""


__all__ = [
    "LookalikeError",
    "ModelMismatchError",
    "CollectionBusyError",
    "DamagedDatabaseError",
    "DatabaseUnavailableError",
    "Interrupted",
    "SettingsError",
    "DataError",
]
