"""`make data` mistakes a new user makes: a typo in the competition file or a moved image folder
found before FORCE touches anything; a failure after FORCE that says how to get back; classes too
small for the folds, with the fix that can work."""

from __future__ import annotations

import shutil

import pytest

from conftest import cli_text
from kagglecv.cli import main
from kagglecv.errors import UserError
from kagglecv.layout import make_folds
from test_folder import TINTS, encode, photo
from test_layout import _images


def _pets(src, per_class: dict[str, int]) -> None:
    seed = 0
    for cls, n in per_class.items():
        (src / cls).mkdir(parents=True)
        for i in range(n):
            seed += 1
            (src / cls / f"{i}.jpg").write_bytes(encode(photo(seed, TINTS[cls])))


@pytest.fixture
def pets(workdir, tmp_path, capsys):
    """data/pets/ prepared from a folder of 12 cats and 12 dogs, n_folds 2."""
    src = tmp_path / "pets"
    _pets(src, {"cat": 12, "dog": 12})
    assert main(["data", "pets", "--src", str(src)]) == 0
    spec = workdir / "competitions" / "pets.yaml"
    spec.write_text(spec.read_text().replace("n_folds: 5", "n_folds: 2"))
    assert main(["data", "pets", "--force"]) == 0, cli_text(capsys)
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
        make_folds(_images({"a": 10, "c": 1}), 5, seed=0)
    with pytest.raises(UserError, match=r"c \(3\): .*; add images, or set n_folds: 3$"):
        make_folds(_images({"a": 10, "c": 3}), 5, seed=0)
