"""One writer per data directory: an OS lock (``flock``) held for a Database's lifetime.

Two processes appending to one write-ahead log interleave sequence numbers and lock
acknowledged writes away, so a second writer is refused with the holder's pid. Read-only
openers share the lock with each other, never with a writer. The lock is the kernel's: it
goes away with the process, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from .errors import DirectoryLocked

LOCK_FILE = ".lock"


def _holders(path: Path) -> list[tuple[int, str]]:
    """(pid, WRITE|READ) of processes holding a flock on ``path`` (Linux /proc/locks)."""
    try:
        st = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want:
            out.append((int(parts[4]), parts[3]))
    return out


class DirectoryLock:
    """Exclusive (``shared=False``) or shared flock on ``<directory>/.lock``."""

    def __init__(self, directory: Path, shared: bool = False):
        self.path = Path(directory) / LOCK_FILE
        self.shared = shared
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryLocked(self._refusal(directory)) from None
        except OSError:
            os.close(fd)
            raise
        if not shared:  # for people reading the file; the kernel's lock is what counts
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    def _refusal(self, directory: Path) -> str:
        holders = [(pid, mode) for pid, mode in _holders(self.path) if pid != os.getpid()] or \
            _holders(self.path)
        writers = [pid for pid, mode in holders if mode == "WRITE"]
        readers = [pid for pid, mode in holders if mode == "READ"]
        if writers:
            who = f"a writer (pid {writers[0]})"
        elif readers:
            who = f"read-only opener(s) (pid {', '.join(map(str, readers))})"
        else:
            who = "another opener"
        want = "read it" if self.shared else "write to it"
        return (f"{directory}: data directory in use by {who}; cannot {want} while it is held "
                f"(one process writes to a data directory at a time: close the other, or talk "
                f"to it through its server)")

    def release(self) -> None:
        if self._fd is not None:
            self._finalizer.detach()
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
