"""Exceptions raised by the engine; each message names the field or file that was wrong."""


class QuiverError(Exception):
    """Base class of every error Quiver raises on purpose."""


class InvalidArgument(QuiverError, ValueError):
    """The caller passed something unusable (wrong dimension, NaN, bad k, unknown metric...)."""


class DuplicateId(InvalidArgument):
    """An id repeated within one call, or one already present where that is not allowed."""


class NotFound(QuiverError, KeyError):
    """A named object (collection, id, file) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CorruptData(QuiverError):
    """A stored file is missing, truncated or fails its checksum; the message names it."""


class AlreadyExists(InvalidArgument):
    """Creating something that exists (a collection name, a restored snapshot's target)."""


class DirectoryLocked(QuiverError):
    """Another process holds the data directory (one writer at a time)."""


class ReadOnly(InvalidArgument):
    """A write to a database opened with ``read_only=True``."""


class ShardUnavailable(QuiverError):
    """A sharded collection's shard has no live replica to answer, or too few acknowledged a
    write; the message names the shard. Nothing partial is returned unless asked for."""
