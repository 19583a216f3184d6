"""The identity of a SQLite store's file: one file, one name, still there.

SQLite keys its journal by the name a process opened (``<name>-wal`` and
``<name>-shm``) and the driver lock is a file named after it too
(``sharing.DriverLock``). So every name of one database must lead to the same
name (issue 16: a symlink gave a second driver, every step ran twice; a hard
link gave two journals over one file, and integrity_check failed):

- a symbolic link is resolved (``realpath``): every engine opens, journals
  and locks the real file, whichever name it was given;
- a hard link has no name more real than another, so a file with more than
  one (``st_nlink > 1``) is refused, before anything is opened, with what to
  do. Refusing is the choice that cannot corrupt: there is no way to tell,
  from one name, which name other processes use.

A file deleted (or replaced) under an open engine would silently take every
later write into an unlinked inode, lost at exit (issue 16). The device and
inode of the file are taken once it is open, and compared with the name's
at every commit (before ``COMMIT``: the write is rolled back) and, at most
every ``_READ_CHECK_EVERY`` seconds, on reads. A store that lost its file
stays lost: every later call raises :class:`~aion_green.errors.StoreLost`.
"""
from __future__ import annotations

import os
from typing import Optional

from aion_green.core import clock as _clock
from aion_green.core.errors import ConfigurationError, StoreLost

# Reads (polls of an idle engine among them) look at the file at most this
# often: a stat is ~1 us, but a poll every 10 ms needs no stat every time.
_READ_CHECK_EVERY = 0.5


def is_file(path: str) -> bool:
    """False for SQLite's in-memory databases, which have no file."""
    return path not in ("", ":memory:")


def canonical_path(path: str) -> str:
    """The one name every engine uses for ``path``: symlinks resolved."""
    return os.path.realpath(path) if is_file(path) else path


def refuse_hard_links(path: str, real: str) -> None:
    """Raise ConfigurationError when the file (if it exists) has another
    name on its disk."""
    try:
        links = os.stat(real).st_nlink
    except FileNotFoundError:
        return  # a new file: SQLite creates it, with one name
    except OSError:
        return  # SQLite's open reports what is wrong
    if links > 1:
        raise ConfigurationError(
            f"the SQLite file {path!r} has {links} names on its disk (hard links): SQLite keeps "
            "a journal (-wal and -shm files) per name, so processes opening two names of one "
            "file would each write a journal of their own and corrupt it. Give the file one "
            f"name (list them with: find <its disk's mount point> -xdev -samefile {real}; remove "
            "the others, or copy the file) and point every engine at it; a symbolic link is fine")


class FileIdentity:
    """The device and inode of an open store's file, and the check that the
    name still leads to them.

    Thread contract: used by the one thread that uses its store at a time.
    """

    def __init__(self, path: str, real: str) -> None:
        self.path = path
        self.real = real
        self._id: Optional[tuple[int, int]] = None
        self._checked = 0.0
        # Invariant: once set, never cleared: a store that lost its file
        # writes nothing more and reads nothing more.
        self.lost: Optional[StoreLost] = None

    def take(self) -> None:
        """Once the file is open (and so exists): remember which it is."""
        if is_file(self.real):
            st = os.stat(self.real)
            self._id = (st.st_dev, st.st_ino)
            self._checked = _clock.monotonic()

    def check(self, commit: bool) -> None:
        """Raise StoreLost when the name no longer leads to the open file;
        on a read, look at most every _READ_CHECK_EVERY seconds."""
        if self.lost is not None:
            raise self.lost
        if self._id is None:
            return
        now = _clock.monotonic()
        if not commit and now - self._checked < _READ_CHECK_EVERY:
            return
        self._checked = now
        try:
            st = os.stat(self.real)
            same = (st.st_dev, st.st_ino) == self._id
            what = "replaced by another file"
        except FileNotFoundError:
            same, what = False, "deleted"
        except OSError:
            return  # unreadable for a moment (permissions, say): SQLite reports what fails
        if not same:
            self.lost = StoreLost(
                f"the SQLite file {self.path!r} was {what} while this engine had it open: what "
                "it wrote would reach only the old, unlinked file and be lost when the process "
                "exits, so it writes and reads nothing more (this call recorded nothing). Stop "
                "every engine over this file, put the database back in place (from a backup), "
                "and start a new Engine")
            raise self.lost
