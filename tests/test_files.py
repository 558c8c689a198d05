"""files.replace_dir: the one build-in-a-hidden-folder-and-swap that export and kernel use."""

from __future__ import annotations

import os

import pytest

from kagglecv.core.files import replace_dir


def _write(text: str):
    def build(tmp):
        (tmp / "a.txt").write_text(text)
        return text

    return build


def test_replace_dir_builds_a_new_folder_and_replaces_an_old_one_whole(tmp_path):
    out = tmp_path / "export"
    assert replace_dir(out, _write("one")) == "one"
    (out / "old-only.txt").write_text("x")
    replace_dir(out, _write("two"))
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"] and (out / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing hidden left beside it


def test_a_failed_build_keeps_the_old_folder_and_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "export"
    replace_dir(out, _write("one"))

    def broken(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        replace_dir(out, broken)
    assert (out / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_half_builds_of_gone_processes_are_cleared_and_a_live_ones_kept(tmp_path):
    out = tmp_path / "export"
    gone = tmp_path / ".export.999999999.tmp"  # no such process
    gone.mkdir()
    live = tmp_path / f".export.{os.getppid()}.tmp"  # another live process's build under way
    live.mkdir()
    replace_dir(out, _write("one"))
    assert not gone.exists() and live.is_dir()


def test_replace_dir_is_not_stopped_or_redirected_by_planted_links(tmp_path):
    """The hidden names were .<name>.<pid>.tmp/.old: a link planted there by someone sharing the
    folder made the build a traceback (mkdir on the link). Now they are fresh mkdtemp names."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    out = tmp_path / "export"
    for kind in ("tmp", "old"):
        (tmp_path / f".export.{os.getpid()}.{kind}").symlink_to(target, target_is_directory=True)
    replace_dir(out, _write("one"))
    replace_dir(out, _write("two"))  # an existing folder moves aside: the .old name too
    assert (out / "a.txt").read_text() == "two" and not out.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
