"""Who may touch a folder right now: advisory `fcntl.flock` locks on a file inside it.

    with data_lock(comp.data_dir, exclusive=True, what="make data"):   # one writer of data/<comp>/
        ...
    with data_lock(comp.data_dir, exclusive=False, what="make train"):  # readers share it
        ...
    with run_share(run_dir, what="make train"):     # "being trained": every trainer of the run holds it
        with claim(run_dir / "fold2.lock", what="make train") as mine:  # one trainer per fold
            if mine: ...
    with waiting(run_dir / ".setup.lock"):          # a short critical section (LR test, metrics.csv)
        ...

The kernel drops a flock when its process dies (Ctrl-C, kill -9, OOM), so a lock is never stale.
The lock file also holds the holder's pid and command, so a refused process can say what is
running and what to do. On a shared network disk flock works where the filesystem supports it
(NFSv4, Lustre, most cluster filesystems).

A lock file is opened without following a symlink and without truncating on open, and refused
unless it is a plain file of its own: in a shared data/ or runs/ folder somebody else could plant a
link (or a hard link) at the lock's name, and the holder's pid line would overwrite its target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from kagglecv.core.errors import UserError

LOCK_NAME = ".lock"


_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no link, no wait on a planted FIFO


def _open(path: Path, flags: int) -> int:
    """`path` opened with `flags`, refused (UserError) unless it is a regular file with one name:
    a symlink, a hard link to some other file, a FIFO or a folder planted at a lock's name."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, 0o644)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        fd = -1
    if fd >= 0:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd
        os.close(fd)
    raise UserError(
        f"{path} is not a plain lock file (a symlink, a link or a special file); "
        "kagglecv will not write through it: remove it and rerun"
    )


def _holder(path: Path) -> str:
    try:
        fd = _open(path, os.O_RDONLY)
    except (OSError, UserError):
        return "another kagglecv process"
    try:
        text = os.read(fd, 1000).decode(errors="replace").strip()
    except OSError:
        text = ""
    finally:
        os.close(fd)
    return text or "another kagglecv process"


@contextlib.contextmanager
def hold(
    path: Path, exclusive: bool, what: str, busy: str, drop_if: Callable[[], bool] | None = None
) -> Iterator[None]:
    """flock `path` (created if missing) without waiting; UserError(busy + holder) when taken.
    An exclusive holder removes the file on leaving where `drop_if()` says so (what it guards is
    gone); a process that opened it meanwhile sees its name gone once it gets the lock, and retries."""
    for _ in range(10):  # each retry: a holder removed the file between our open and our flock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open(path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            if exclusive or e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            yield  # a reader of a read-only folder: nobody can be writing it, so no lock is needed
            return
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{busy} ({_holder(path)} holds {path}); wait for it to finish") from None
        if _still_named(fd, path):
            break
        os.close(fd)
    else:
        raise UserError(f"{busy} ({path} keeps being replaced); rerun")
    try:
        if exclusive:  # readers share the lock; only an exclusive holder says who it is
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {what}".encode())
        yield
    finally:
        try:
            if exclusive and drop_if is not None and drop_if():
                path.unlink(missing_ok=True)  # still held: nobody else is inside
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _still_named(fd: int, path: Path) -> bool:
    """Is the file open at `fd` still the one at `path` (not removed by the holder we waited for)?"""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def data_lock(data_dir: Path, exclusive: bool, what: str) -> contextlib.AbstractContextManager[None]:
    """data/<comp>/: exclusive while `make data` writes it, shared while train/submit/inspect read.
    The lock file sits beside the folder (data/.<comp>.lock), so it outlives a folder that a failed
    first fetch removes again, and never shows up among the competition's files; a writer that
    leaves no folder (`make data COMP=nope`: Kaggle knows no such competition) removes it too."""
    busy = (
        f"{data_dir} is in use: `make data` needs it to itself"
        if exclusive
        else f"{data_dir} is being written by `make data`"
    )

    def gone() -> bool:
        return not (data_dir.exists() or data_dir.is_symlink())

    return hold(data_dir.parent / f".{data_dir.name}.lock", exclusive, what, busy, drop_if=gone)


def run_lock(run_dir: Path, what: str) -> contextlib.AbstractContextManager[None]:
    """runs/<comp>/<run>/: one process trains or resumes a run folder at a time."""
    return hold(run_dir / LOCK_NAME, True, what, f"run {run_dir.name} is already being trained")


def run_share(run_dir: Path, what: str) -> contextlib.AbstractContextManager[None]:
    """runs/<comp>/<run>/ shared by every process training some of its folds (each fold is claimed
    on its own, `claim`); an exclusive holder (nothing in kagglecv takes one any more) refuses them."""
    return hold(run_dir / LOCK_NAME, False, what, f"run {run_dir.name} is already being trained")


@contextlib.contextmanager
def claim(path: Path, what: str) -> Iterator[bool]:
    """Try to take `path` exclusively without waiting: yields True (held until the block ends, or
    until the process dies) or False (another process holds it). The file keeps the last holder's
    pid and command, so `holder(path)` can say who trained that fold."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {what}".encode())
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def waiting(path: Path) -> Iterator[None]:
    """Take `path` exclusively, waiting for it: for a few seconds' work that two processes must not
    do at once (the LR range test of a shared run, merging metrics.csv, gathering)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def holder(path: Path) -> str:
    """Who holds (or last held) a claim file: "pid N: command"."""
    return _holder(path)


def is_locked(path: Path) -> bool:
    """True while some process holds `path`, shared or exclusive (a run being trained)."""
    try:
        fd = _open(path, os.O_RDONLY)
    except (FileNotFoundError, UserError):  # no lock, or one kagglecv would refuse to take
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
