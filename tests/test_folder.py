"""Source `folder` + layout `holdout`: a folder of class folders in every awkward format -> the
prepared shape with a stratified labelled holdout; broken files are reported, never fatal."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.images import AWKWARD, TINTS, awkward, encode, make_folder, photo
from kagglecv.cli import main
from kagglecv.core.images import check_image, decode, export_rgb
from kagglecv.prepare.holdout import holdout_mask
from kagglecv.prepare.sources.folder import write_competition


def test_awkward_modes_decode_upright_rgb(tmp_path):
    img = photo(7, size=(80, 64))
    for name in AWKWARD:
        check = check_image(awkward(name, img), min_size=32)
        assert check.ok, (name, check)
        rgb, *_ = decode(awkward(name, img))
        assert rgb.mode == "RGB"
        assert rgb.size == ((64, 80) if name == "rotated.jpg" else (80, 64)), name
        src = tmp_path / name
        src.write_bytes(awkward(name, img))
        out = export_rgb(src, tmp_path / "out" / name.replace(".", "_"))
        arr = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)  # what training reads, exactly as stored
        assert arr.dtype == np.uint8 and arr.shape[2] == 3
        assert arr.shape[:2] == ((80, 64) if name == "rotated.jpg" else (64, 80)), name
    # a plain upright RGB JPEG is linked untouched, not re-encoded
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(encode(img))
    assert export_rgb(plain, tmp_path / "out" / "plain").read_bytes() == plain.read_bytes()
    # the rgba one: transparency lands on white, as a viewer shows it
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert decode(encode(rgba, "PNG"))[0].getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html>nope</html>", "not_an_image"),
        (b"\x00\x01\x02garbage" * 20, "not_an_image"),
        (encode(photo(1))[:300], "corrupt"),
        (encode(photo(1, size=(20, 90))), "too_small"),
    ],
)
def test_bad_bytes_are_named(data, status):
    assert check_image(data, min_size=32).status == status


def test_folder_to_prepared_shape(workdir, tmp_path, capsys):
    src = tmp_path / "pets"
    skipped = make_folder(src)
    # a name rich would read as markup, and a link whose target is gone: both listed as they are
    (src / "cat" / "holiday[bold].jpg").write_bytes(encode(photo(1))[:200])
    (src / "dog" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    yours = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert main(["data", "my-pets", "--src", str(src)]) == 0
    assert {p: p.read_bytes() for p in yours} == yours  # your folder: only read
    out = capsys.readouterr().out
    assert "skipped cat/holiday[bold].jpg: corrupt" in out
    assert (
        f"skipped dog/gone.jpg: broken_link links to {tmp_path / 'deleted.jpg'}, which does not exist" in out
    )
    assert (workdir / "competitions" / "my-pets.yaml").exists()
    root = workdir / "data" / "my-pets"
    for name in skipped:
        assert f"skipped {name}:" in out, name  # every skipped file is reported by name
    assert "README.txt" in out and "outside_classes" in out
    manifest = pd.read_csv(root / "raw" / "manifest.csv", keep_default_na=False)
    status = dict(
        zip(manifest["url"].map(lambda u: u.replace(str(src) + "/", "")), manifest["status"], strict=True)
    )
    assert status["cat/truncated.jpg"] == "corrupt" and status["dog/page.jpg"] == "not_an_image"
    assert status["cat/notes.txt"] == "not_an_image" and status["cat/tiny.png"] == "too_small"
    assert status["cat/empty.png"] == "empty" and status["dog/gone.jpg"] == "broken_link"
    assert not any(".DS_Store" in u for u in manifest["url"])
    kept = manifest[manifest["status"] == "kept"]
    assert len(kept) == 2 * (12 + len(AWKWARD))

    folds = pd.read_csv(root / "folds.csv")
    solution = pd.read_csv(root / "solution.csv")
    sample = pd.read_csv(root / "sample_submission.csv")
    assert len(folds) + len(solution) == len(kept)
    assert sorted(solution["label"]) == ["cat", "dog"]  # 5% of 20 per class, at least one each
    assert list(sample.columns) == ["id", "label"] and sample["id"].tolist() == solution["id"].tolist()
    assert sorted(p.stem for p in (root / "test").iterdir()) == sorted(solution["id"].astype(str))
    assert any("nested__deeper__" in p for p in folds["image"])  # nested folders, flattened
    for path in [*(root / "train").rglob("*.*"), *(root / "test").iterdir()]:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert arr is not None and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, path
    rotated = [p for p in (root / "train").rglob("*rotated*")]
    for p in rotated:
        assert cv2.imread(str(p)).shape[:2] == (80, 64)  # upright: taller than wide

    # the YAML written for the folder is a normal competition: rerunning needs no SRC
    assert main(["data", "my-pets"]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_folder_errors_are_one_line(workdir, tmp_path, capsys):
    assert main(["data", "x", "--src", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().out
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    (one / "cat" / "a.jpg").write_bytes(encode(photo(1)))
    assert main(["data", "x", "--src", str(one)]) == 2
    assert "one subfolder per class" in capsys.readouterr().out
    assert not (workdir / "competitions" / "x.yaml").exists()
    assert main(["data", "digits-demo", "--src", str(one)]) == 2
    assert "not a folder competition" in capsys.readouterr().out


def test_near_duplicates_stay_on_one_side_and_in_one_fold(workdir, tmp_path):
    src = tmp_path / "pets"
    for k, (cls, tint) in enumerate(TINTS.items()):
        (src / cls).mkdir(parents=True)
        for i in range(20):
            # fixed seeds: hash() of a tuple changes with PYTHONHASHSEED, and about 1 picture in 400
            # hashes more than group_distance bits from its resized PNG copy
            img = photo(100 * k + i, tint)
            (src / cls / f"{i}.jpg").write_bytes(encode(img))
            if i < 6:  # a resized copy: a near duplicate kept (near_distance -1) but grouped
                (src / cls / f"{i}_big.png").write_bytes(encode(img.resize((120, 96)), "PNG"))
    yaml_path = write_competition("dups", src)
    yaml_path.write_text(yaml_path.read_text().replace("near_distance: 4", "near_distance: -1"))
    assert main(["data", "dups"]) == 0
    root = workdir / "data" / "dups"
    folds = pd.read_csv(root / "folds.csv")
    assert len(folds) + len(pd.read_csv(root / "solution.csv")) == 2 * 26  # near duplicates kept
    fold_of = {
        p.split("/")[-1].rsplit(".", 1)[0]: f for p, f in zip(folds["image"], folds["fold"], strict=True)
    }
    for cls in TINTS:
        for i in range(6):
            a, b = fold_of.get(f"{i}"), fold_of.get(f"{i}_big")
            # both in train and in the same fold, or both in the holdout (neither in folds.csv)
            assert (a is None) == (b is None) and a == b, (cls, i, a, b)


def test_holdout_mask_is_stratified_and_keeps_groups():
    labels = np.array(["a"] * 60 + ["b"] * 40)
    groups = np.arange(100)
    groups[10:14] = 10  # a group of four near duplicates
    mask = holdout_mask(labels, groups, 0.1, seed=0)
    assert mask[labels == "a"].sum() == 6 and mask[labels == "b"].sum() == 4
    assert len(set(mask[10:14])) == 1
    assert (holdout_mask(labels, groups, 0.1, seed=0) == mask).all()  # seeded: stable


def test_tiny_images_are_duplicates_only_when_their_pixels_are_the_same():
    """Under 64 px the 8x8 perceptual hash calls look-alikes copies: distinct small images are kept."""
    import io

    import numpy as np
    from PIL import Image

    from kagglecv.core.images import Deduper

    def png(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((40, 40), Image.BICUBIC))  # a smooth picture, as photos are
    look_alike = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
    big_base, big_alike = (np.kron(a, np.ones((2, 2, 1), np.uint8)) for a in (base, look_alike))
    deduper, kept = Deduper(4), []
    for name, pixels in [
        ("a", base),
        ("b", look_alike),
        ("a-again", base),
        ("A", big_base),
        ("B", big_alike),
    ]:
        chk = check_image(png(pixels), min_size=32)
        status, of = deduper.check(chk.sha256, chk.phash)
        if status == "kept":
            deduper.add(chk.sha256, chk.phash, name)
        kept.append((name, status, of))
    assert kept[:3] == [("a", "kept", ""), ("b", "kept", ""), ("a-again", "exact_duplicate", "a")]
    assert kept[4] == ("B", "near_duplicate", "A")  # at 80 px the perceptual hash still merges look-alikes


def test_a_class_folder_name_that_cannot_be_a_folder_here_is_refused(workdir, tmp_path, capsys):
    src = tmp_path / "pets"
    make_folder(src, n_per_class=6)
    (src / "cat").rename(src / "cat\x1b[2J")  # a terminal escape in a folder name
    assert main(["data", "pets", "--src", str(src)]) == 2
    assert "cannot be a folder name" in capsys.readouterr().out
    assert not (workdir / "data" / "pets" / "raw").exists()
