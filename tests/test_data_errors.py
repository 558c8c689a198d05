"""`make data` mistakes a new user makes: a typo in the competition file or a moved image folder
found before FORCE touches anything; a failure after FORCE that says how to get back; classes too
small for the folds, with the fix that can work."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers.cli import cli_text
from helpers.images import TINTS, encode, labelled_images, photo, pixel_csvs
from helpers.repo import REPO
from kagglecv.cli import main
from kagglecv.core.errors import UserError
from kagglecv.prepare.folds import make_folds


def _pets(src, per_class: dict[str, int]) -> None:
    seed = 0
    for cls, n in per_class.items():
        (src / cls).mkdir(parents=True)
        for i in range(n):
            seed += 1
            (src / cls / f"{i}.jpg").write_bytes(encode(photo(seed, TINTS[cls])))


@pytest.fixture(scope="module")
def pets_prepared(tmp_path_factory):
    """A folder of 12 cats and 12 dogs (root/pets/) and data/pets/ prepared from it, n_folds 2: made
    once per module by `kagglecv data`, then copied into each test's working folder by `pets`."""
    root = tmp_path_factory.mktemp("pets")
    shutil.copytree(REPO / "competitions", root / "competitions")
    src = root / "pets"
    _pets(src, {"cat": 12, "dog": 12})
    old = os.getcwd()
    os.chdir(root)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KAGGLECV_NO_PROGRESS", "1")
            assert main(["data", "pets", "--src", str(src)]) == 0
            spec = root / "competitions" / "pets.yaml"
            spec.write_text(spec.read_text().replace("n_folds: 5", "n_folds: 2"))
            assert main(["data", "pets", "--force"]) == 0
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def pets(workdir, tmp_path, pets_prepared, capsys):
    """data/pets/ prepared from a folder of 12 cats and 12 dogs (tmp_path/pets/), n_folds 2: a copy
    of `pets_prepared`, with the folder's path in pets.yaml and raw/manifest.csv made this test's."""
    src = tmp_path / "pets"
    shutil.copytree(pets_prepared / "pets", src)
    shutil.copytree(pets_prepared / "data" / "pets", workdir / "data" / "pets")
    for rel in ("competitions/pets.yaml", "data/pets/raw/manifest.csv"):
        text = (pets_prepared / rel).read_text()
        assert str(pets_prepared / "pets") in text
        (workdir / rel).write_text(text.replace(str(pets_prepared / "pets"), str(src)))
    capsys.readouterr()
    return src


def _state(workdir) -> dict[str, int]:
    """What FORCE must not have touched: prepared.json and every file under raw/, by mtime."""
    root = workdir / "data" / "pets"
    files = [root / "prepared.json", *sorted((root / "raw").rglob("*"))]
    return {str(p): p.stat().st_mtime_ns for p in files}


def test_layout_typo_is_caught_before_force_removes_anything(workdir, pets, capsys):
    before = _state(workdir)
    spec = workdir / "competitions" / "pets.yaml"
    spec.write_text(spec.read_text().replace("  holdout: 0.05", "  holdot: 0.05"))
    assert main(["data", "pets", "--force"]) == 2
    text = cli_text(capsys)
    assert "pets.yaml: layout (kind holdout): unknown key 'holdot'. Did you mean 'holdout'?" in text
    assert _state(workdir) == before


def test_bad_holdout_value_is_caught_before_force_removes_anything(workdir, pets, capsys):
    before = _state(workdir)
    spec = workdir / "competitions" / "pets.yaml"
    spec.write_text(spec.read_text().replace("  holdout: 0.05", "  holdout: 0.7"))
    assert main(["data", "pets", "--force"]) == 2
    assert "layout.holdout must be a fraction between 0 and 0.5" in cli_text(capsys)
    assert _state(workdir) == before


def test_moved_folder_is_caught_before_force_removes_anything(workdir, pets, capsys):
    before = _state(workdir)
    pets.rename(pets.with_name("pets-moved"))
    assert main(["data", "pets", "--force"]) == 2
    text = cli_text(capsys)
    assert f"source.path {pets} does not exist (moved or renamed?)" in text
    assert _state(workdir) == before
    # without FORCE the prepared data is simply still there
    assert main(["data", "pets"]) == 0 and "already prepared" in cli_text(capsys)


def test_failure_after_force_says_how_to_get_back(workdir, pets, capsys):
    spec = workdir / "competitions" / "pets.yaml"
    spec.write_text(spec.read_text().replace("n_folds: 2", "n_folds: 40"))
    assert main(["data", "pets", "--force"]) == 2
    text = cli_text(capsys)
    # 40 folds and a 5% holdout: 42 images (41 would lose round(0.05 * 41) = 2, leaving 39)
    assert "too few images for n_folds: 40" in text and "needs at least 42 images" in text
    assert "The raw data in data/pets/raw/ is intact" in text
    assert "`make data COMP=pets` (without FORCE) lays it out again, with no new fetch" in text
    root = workdir / "data" / "pets"
    assert not (root / "prepared.json").exists() and not (root / ".staging").exists()
    # as promised: fix the YAML, rerun without FORCE, and raw/ is laid out again (the folder is gone,
    # so nothing was read from it)
    shutil.rmtree(pets)
    spec.write_text(spec.read_text().replace("n_folds: 40", "n_folds: 2"))
    assert main(["data", "pets"]) == 0, cli_text(capsys)
    assert (root / "prepared.json").exists()


def test_too_few_images_names_the_file_and_what_each_class_needs(workdir, tmp_path, capsys):
    src = tmp_path / "few"
    _pets(src, {"cat": 12, "dog": 2})  # the holdout takes one dog: one left for five folds
    assert main(["data", "few", "--src", str(src)]) == 2
    text = cli_text(capsys)
    assert (
        "competitions/few.yaml: too few images for n_folds: 5 in class(es) dog (2 images, 1 left after the holdout)"
        in text
    )
    assert "every class needs at least 6 images (5 for the folds, the rest for the holdout)" in text
    assert f"add images to {src}/dog/ and rerun with FORCE=1" in text
    assert "set n_folds" not in text  # one image cannot be split into two folds: no dead end offered
    assert not (workdir / "data" / "few" / "prepared.json").exists()

    # where lowering n_folds can work, it is offered, with the value that works
    for i in range(2, 4):
        (src / "dog" / f"{i}.jpg").write_bytes(encode(photo(100 + i, TINTS["dog"])))
    assert main(["data", "few", "--force"]) == 2
    text = cli_text(capsys)
    assert "dog (4 images, 3 left after the holdout)" in text and "or set n_folds: 3" in text
    spec = workdir / "competitions" / "few.yaml"
    spec.write_text(spec.read_text().replace("n_folds: 5", "n_folds: 3"))
    assert main(["data", "few"]) == 0, cli_text(capsys)


def test_make_folds_never_offers_a_dead_end():
    with pytest.raises(UserError, match=r"c \(1\): every class needs at least n_folds images; add images$"):
        make_folds(labelled_images({"a": 10, "c": 1}), 5, seed=0)
    with pytest.raises(UserError, match=r"c \(3\): .*; add images, or set n_folds: 3$"):
        make_folds(labelled_images({"a": 10, "c": 3}), 5, seed=0)


@pytest.fixture
def tiny_digits(workdir):
    """digits-demo as its competition file has it, prepared from a raw/ of 40 4x4 pixel rows in its
    csv_pixels format (already there: nothing is fetched): the same layout, a fortieth of the images."""
    from kagglecv.core.competition import load_competition
    from kagglecv.prepare.layout import prepare

    pixel_csvs(workdir / "data" / "digits-demo" / "raw")
    prepare(load_competition("digits-demo"))
    return workdir


# --- one `make data` at a time, and any half-written state recovered without FORCE ----------------


def test_a_second_make_data_is_refused_while_one_runs(tiny_digits, capsys):
    digits = tiny_digits
    """Two `make data` at once both crashed and left a raw/manifest.csv listing missing files."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from kagglecv.core.locks import data_lock\n"
            "with data_lock(Path('data/digits-demo'), exclusive=True, what='make data COMP=digits-demo'):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.stat().st_mtime_ns for p in (digits / "data" / "digits-demo").iterdir())
        (digits / "data" / "digits-demo" / "prepared.json").unlink()  # so this one would lay out again
        assert main(["data", "digits-demo"]) == 2
        text = cli_text(capsys)
        assert f"pid {holder.pid}: make data COMP=digits-demo holds data/.digits-demo.lock" in text
        assert "wait for it to finish" in text and len(before) - 1 == len(
            list((digits / "data" / "digits-demo").iterdir())
        )
    finally:
        holder.communicate("")  # the holder exits; its lock goes with it
    assert main(["data", "digits-demo"]) == 0, cli_text(capsys)
    assert (digits / "data" / "digits-demo" / "prepared.json").exists()


def _half_written(root, state: str) -> None:
    if state == "raw.partial":  # killed while fetching
        shutil.rmtree(root / "raw")
        (root / "raw.partial" / "cat").mkdir(parents=True)
        (root / "raw.partial" / "cat" / "half.jpg").write_bytes(b"\xff\xd8")
    elif state == ".staging":  # killed while laying out
        (root / ".staging" / "train" / "cat").mkdir(parents=True)
    elif state == "no prepared.json":  # killed during the swap
        shutil.rmtree(root / "test")
    elif state == "damaged prepared.json":  # a power cut before the marker reached the disk
        (root / "prepared.json").write_text('{"classes": ')
        return
    elif state in ("train", "test"):  # deleted by hand: laid out again, nothing fetched
        shutil.rmtree(root / state)
        return
    elif state == "raw.old":  # killed between FORCE's two renames
        (root / "raw").rename(root / "raw.old")
    elif state == "manifest lists missing files":  # two `make data` at once, before the lock
        kept = sorted((root / "raw" / "dog").glob("*.jpg"))
        kept[0].unlink()
    (root / "prepared.json").unlink(missing_ok=True)


@pytest.mark.parametrize(
    "state",
    [
        "raw.partial",
        ".staging",
        "no prepared.json",
        "damaged prepared.json",
        "raw.old",
        "manifest lists missing files",
        "train",
        "test",
    ],
)
def test_plain_make_data_recovers_from_any_half_written_state(workdir, pets, capsys, state):
    root = workdir / "data" / "pets"
    _half_written(root, state)
    assert main(["data", "pets"]) == 0, cli_text(capsys)
    text = cli_text(capsys)
    assert "already prepared" not in text
    assert ("incomplete" in text) == (state == "manifest lists missing files")
    assert ("fetching" in text) == (state in ("raw.partial", "manifest lists missing files"))
    left = {p.name for p in root.iterdir()}
    assert not left & {"raw.partial", ".staging", "raw.old"} and "prepared.json" in left
    manifest = pd.read_csv(root / "raw" / "manifest.csv", keep_default_na=False)
    assert all((root / "raw" / f).is_file() for f in manifest.loc[manifest["status"] == "kept", "file"])
    assert len(pd.read_csv(root / "folds.csv")) + len(pd.read_csv(root / "solution.csv")) == 24


# --- full and read-only disks ----------------------------------------------------------------------


def _disk_full_after(n: int, real):
    calls = {"n": 0}

    def copy(src, dst, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    return copy


def test_full_disk_during_a_folder_import(workdir, tmp_path, capsys, monkeypatch):
    src = tmp_path / "pets"
    _pets(src, {"cat": 12, "dog": 12})
    before = {p: p.read_bytes() for p in src.rglob("*.jpg")}
    monkeypatch.setattr(shutil, "copyfile", _disk_full_after(5, shutil.copyfile))
    assert main(["data", "pets", "--src", str(src)]) == 2
    text = cli_text(capsys)
    assert re.search(rf"importing {src}/ into data/pets/ needs \d+\.\d (KB|MB) but that disk has", text)
    assert "0.0 GB" not in text and "free some space" in text
    root = workdir / "data" / "pets"
    assert not root.exists() or not {"raw", "raw.partial"} & {p.name for p in root.iterdir()}
    assert {p: p.read_bytes() for p in before} == before  # the user's folder: untouched


def test_too_little_room_for_a_folder_import_is_found_before_copying(workdir, tmp_path, capsys, monkeypatch):
    src = tmp_path / "pets"
    _pets(src, {"cat": 12, "dog": 12})
    import kagglecv.prepare.sources.folder as folder

    monkeypatch.setattr(folder.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 2048))

    def copy(*args, **kwargs):
        raise AssertionError("copied before checking the room")

    monkeypatch.setattr(shutil, "copyfile", copy)
    assert main(["data", "pets", "--src", str(src)]) == 2
    assert re.search(r"needs \d+\.\d KB but that disk has 2\.0 KB free: free some space", cli_text(capsys))


def test_full_disk_while_laying_out_keeps_raw_and_the_previous_preparation(
    workdir, pets, capsys, monkeypatch
):
    root = workdir / "data" / "pets"
    spec = workdir / "competitions" / "pets.yaml"
    spec.write_text(spec.read_text().replace("n_folds: 2", "n_folds: 3"))  # makes data split again
    before = _state(workdir)
    import kagglecv.core.images as images

    monkeypatch.setattr(images.shutil, "copyfile", _disk_full_after(0, shutil.copyfile))
    monkeypatch.setattr(
        Path, "hardlink_to", lambda self, target: (_ for _ in ()).throw(OSError(errno.EXDEV, ""))
    )
    assert main(["data", "pets"]) == 2
    text = cli_text(capsys)
    assert re.search(r"laying out data/pets/ stopped: the disk is full \(writing data/pets/.staging/", text)
    assert re.search(r"it needs up to \d+\.\d KB \(the size of raw/\)", text) and "raw/ is kept" in text
    assert not (root / ".staging").exists() and _state(workdir) == before
    assert pd.read_csv(root / "folds.csv")["fold"].max() == 1  # the complete preparation, as it was


def test_read_only_data_folder_is_one_line(tiny_digits, capsys, monkeypatch):
    root = tiny_digits / "data" / "digits-demo"
    (root / "prepared.json").unlink()
    import kagglecv.prepare.label_layouts as kinds

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(kinds, "_write_png", lambda path, pixels: read_only(path, pixels))
    assert main(["data", "digits-demo"]) == 2
    text = cli_text(capsys)
    assert "make data digits-demo: cannot write data/digits-demo/.staging/train/" in text
    assert "read-only file system" in text and not (root / ".staging").exists()


def test_read_only_data_folder_refuses_before_anything(tiny_digits, capsys, monkeypatch):
    digits = tiny_digits
    import kagglecv.core.locks as locks

    def read_only(path, *args):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(locks.os, "open", read_only)
    (digits / "data" / "digits-demo" / "prepared.json").unlink()
    assert main(["data", "digits-demo"]) == 2
    text = cli_text(capsys)
    assert (
        "make data digits-demo: cannot write data/.digits-demo.lock: it is on a read-only file system" in text
    )


def test_a_label_outside_submission_classes_is_refused_by_make_data(workdir, capsys):
    """cassava lists the codes of its label map as submission.classes: a train.csv row labelled 5
    (a code the map lacks) would train a class no submission may hold. One line, nothing prepared."""
    import io
    import zipfile

    from helpers.kaggle_fake import competition_zip

    slug = "cassava-leaf-disease-classification"
    raw = workdir / "data" / slug / "raw"
    with zipfile.ZipFile(io.BytesIO(competition_zip(slug))) as z:
        z.extractall(raw)  # raw/ already there: make data lays it out without asking Kaggle
    image = next((raw / "train_images").iterdir())
    with open(raw / "train.csv", "a") as f:
        for i in range(5):  # enough for the 5 folds: only the label is wrong
            shutil.copyfile(image, raw / "train_images" / f"99{i}.jpg")
            f.write(f"99{i}.jpg,5\n")
    assert main(["data", slug]) == 2
    text = cli_text(capsys)
    assert (
        f"{slug}: training labels ['5'] are not among submission.classes ['0', '1', '2', '3', '4'] of "
        in text
    )
    assert "Traceback" not in text and len(text.strip().splitlines()) <= 2
    root = workdir / "data" / slug
    assert not (root / "prepared.json").exists() and not (root / "train").exists()
    assert not (root / ".staging").exists() and (raw / "train.csv").exists()
