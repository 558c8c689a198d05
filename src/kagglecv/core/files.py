"""Writing files so that a file that exists is complete."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_UMASK = os.umask(0o022)  # read it (no call reads it without setting it) ...
os.umask(_UMASK)  # ... and put it back at once, while the module loads


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` then rename tmp to `path`: a killed process never leaves a half file under the
    real name. The temporary file is created afresh (O_EXCL) under an unpredictable name, so two
    writers (torchrun ranks) never share one and a symlink planted beside `path` in a shared folder
    cannot redirect the write; it keeps the suffix, so writers that pick a format by it still do,
    and gets the permissions a plain new file would (mkstemp alone would make it private)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=f".tmp{path.suffix}")
    tmp = path.parent / Path(name).name  # spelled as `path` is (mkstemp makes it absolute)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def replace_dir(out: Path, build: Callable[[Path], T]) -> T:
    """`build(tmp)` into a hidden folder beside `out`, then put it in `out`'s place: a folder under
    the real name is always complete, and an existing `out` is kept until the new one is whole (it
    moves aside, the new one is renamed in, then the old one goes), so at no moment is neither there.
    Leftover half-builds of `out` by processes that are gone are removed first; a failed build
    removes its own. Both hidden names are made afresh and unpredictable (mkdtemp), so a link planted
    beside `out` in a shared folder can neither be written through nor stop the build."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = fresh_dir(out, "tmp")
    try:
        result = build(tmp)
        if out.exists():
            old = fresh_dir(out, "old")
            out.rename(old)  # onto the fresh empty folder, which rename replaces
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def fresh_dir(out: Path, kind: str) -> Path:
    """A new empty hidden folder beside `out`, .<name>.<random>.<pid>.<kind> (remove_leftovers reads
    the pid), with the permissions a plain mkdir would give (mkdtemp alone makes it private)."""
    made = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=f".{os.getpid()}.{kind}")
    path = out.parent / Path(made).name  # spelled as `out` is
    path.chmod(0o777 & ~_UMASK)
    return path


def remove_leftovers(out: Path) -> None:
    """Hidden half-builds of `out` (.<name>.<pid>.tmp/.old) whose process is gone."""
    for stale in [*out.parent.glob(f".{out.name}.*.tmp"), *out.parent.glob(f".{out.name}.*.old")]:
        try:
            pid = int(stale.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # another build of this folder is under way
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(stale, ignore_errors=True)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB', 3.2e9 -> '3.2 GB': sizes people read (never '0.0 GB')."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{int(n)} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst` (no second copy on disk), else copy it. The source is never written:
    whoever later rewrites `dst` must replace it (atomic_write renames), never open it for writing,
    or the change would go through the link into the source (raw/, a download cache)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def disk_error(e: OSError) -> str | None:
    """One line for an OSError a user can fix (full disk, read-only, no permission), else None.
    Names the path and, for a full disk, how much room is left there."""
    why = DISK_ERRORS.get(e.errno or 0)
    if why is None:
        return None
    where = e.filename or ""
    line = f"cannot write {where}: {why}" if where else f"cannot write: {why}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and where:
        folder = Path(where).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            line += f" ({human_bytes(shutil.disk_usage(folder).free)} free in {folder}/)"
        except OSError:
            pass
        line += "; free some space (old runs/, data/<comp>/cache/) and rerun"
    else:
        line += "; fix the folder's permissions (or point kagglecv at a writable copy) and rerun"
    return line
