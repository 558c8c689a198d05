"""A symlink (or hard link, or FIFO) planted at a lock's name or beside an atomically written file
in a shared folder: kagglecv refuses the lock in one line and never writes through to the target."""

from __future__ import annotations

import os
import stat

import pytest

from helpers.cli import cli_text
from kagglecv.cli import main
from kagglecv.core import locks
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write

SECRET = "the victim's file\n"


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim" / "notes.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def _lock_kinds(tmp_path):
    """Each kind of lock kagglecv takes, as (lock file, how it is taken)."""
    from kagglecv.compete import upload

    run = tmp_path / "runs" / "c" / "r1"
    return {
        "data": (tmp_path / "data" / ".c.lock", lambda: locks.data_lock(tmp_path / "data" / "c", True, "x")),
        "data shared": (
            tmp_path / "data" / ".c.lock",
            lambda: locks.data_lock(tmp_path / "data" / "c", False, "x"),
        ),
        "run": (run / locks.LOCK_NAME, lambda: locks.run_lock(run, "x")),
        "run share": (run / locks.LOCK_NAME, lambda: locks.run_share(run, "x")),
        "fold": (run / "fold0.lock", lambda: locks.claim(run / "fold0.lock", "x")),
        "setup": (run / ".setup.lock", lambda: locks.waiting(run / ".setup.lock")),
        "upload": (upload.LOG.with_name(".upload.lock"), upload._one_upload_at_a_time),
    }


@pytest.mark.parametrize("kind", ["data", "data shared", "run", "run share", "fold", "setup", "upload"])
@pytest.mark.parametrize("plant", ["symlink", "dangling symlink", "hard link", "fifo"])
def test_a_planted_lock_is_refused_and_its_target_untouched(workdir, victim, kind, plant):
    path, take = _lock_kinds(workdir)[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    if plant == "symlink":
        path.symlink_to(victim)
    elif plant == "dangling symlink":  # O_CREAT through it would make a file wherever it points
        path.symlink_to(victim.with_name("made.txt"))
    elif plant == "hard link":
        os.link(victim, path)
    else:
        os.mkfifo(path)
    with pytest.raises(UserError, match=r"is not a plain lock file .* remove it and rerun$"):
        with take():
            pass
    assert victim.read_text() == SECRET and not victim.with_name("made.txt").exists()
    assert not locks.is_locked(path)  # a reader (make runs) passes over it, no hang on the FIFO


def test_a_real_lock_file_still_works_and_says_who_holds_it(workdir):
    path = workdir / "runs" / "c" / "r1" / "fold0.lock"
    with locks.claim(path, "make train RUN=r1") as mine:
        assert mine and locks.is_locked(path)
        assert locks.holder(path) == f"pid {os.getpid()}: make train RUN=r1"
    assert stat.S_ISREG(path.lstat().st_mode) and not locks.is_locked(path)


def test_make_data_with_a_planted_data_lock_says_so_in_one_line(workdir, victim, capsys):
    (workdir / "data").mkdir()
    (workdir / "data" / ".digits-demo.lock").symlink_to(victim)
    assert main(["data", "digits-demo"]) == 2
    text = cli_text(capsys)
    assert "data/.digits-demo.lock is not a plain lock file" in text
    assert victim.read_text() == SECRET


def test_atomic_write_never_writes_through_a_planted_temporary_name(tmp_path, victim):
    """The old temporary name was `<name>.<pid>.tmp<suffix>`: anyone could plant a link there."""
    out = tmp_path / "shared" / "summary.json"
    out.parent.mkdir()
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (out.parent / f"{out.name}.{pid}.tmp{out.suffix}").symlink_to(victim)
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not tmp.is_symlink() and tmp.parent == out.parent and tmp.suffix == ".json"
        tmp.write_text("{}")

    atomic_write(out, write)
    atomic_write(out, write)
    assert out.read_text() == "{}" and not out.is_symlink() and victim.read_text() == SECRET
    assert seen[0] != seen[1]  # a fresh, unpredictable name each time
    mode = stat.S_IMODE(out.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # an ordinary new file's permissions, not mkstemp's private ones


def test_atomic_write_leaves_nothing_behind_when_the_write_fails(tmp_path):
    out = tmp_path / "a.csv"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(out, broken)
    assert list(tmp_path.iterdir()) == []
