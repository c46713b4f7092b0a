"""The errors the library raises: each message is one line a person can act on (the CLI prints it as is)."""

from __future__ import annotations


class LookalikeError(Exception):
    """An error whose message a person can act on (the CLI prints it as one line, exit status 1)."""


class ModelMismatchError(LookalikeError):
    """The stored vectors were made by another model or masking; re-embedding is needed to change it."""


class CollectionBusyError(LookalikeError):
    """Another process holds the collection's write lock."""


__all__ = ["LookalikeError", "ModelMismatchError", "CollectionBusyError"]
