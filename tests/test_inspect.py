"""`kagglecv inspect`: counts with an imbalance warning, sizes, dropped files, near-duplicate groups
(leakage across train/test, label conflicts across classes) and a contact sheet."""

from __future__ import annotations

import shutil

import pandas as pd
from PIL import Image

from helpers.images import TINTS, encode, make_folder, photo
from kagglecv.cli import main
from kagglecv.core.competition import load_competition
from kagglecv.prepare.inspect import inspect_data
from kagglecv.prepare.sources.folder import write_competition


def test_inspect_reports_what_matters(workdir, tmp_path, capsys):
    src = tmp_path / "pets"
    make_folder(src, n_per_class=4)
    for i in range(30):  # far more cats than dogs
        (src / "cat" / f"extra_{i}.jpg").write_bytes(encode(photo(500 + i, TINTS["cat"], size=(120, 90))))
    path = write_competition("pets", src)
    path.write_text(path.read_text().replace("n_folds: 5", "n_folds: 2"))
    assert main(["data", "pets"]) == 0
    root = workdir / "data" / "pets"
    # leakage, as a careless dataset has it: a training image also sits in the test set
    leaked = sorted((root / "train" / "dog").iterdir())[0]
    shutil.copyfile(leaked, root / "test" / ("leak" + leaked.suffix))
    # a label conflict: the same picture filed under both classes
    conflict = sorted((root / "train" / "cat").iterdir())[0]
    shutil.copyfile(conflict, root / "train" / "dog" / ("conflict" + conflict.suffix))
    folds = pd.read_csv(root / "folds.csv")
    rel = f"train/dog/conflict{conflict.suffix}"
    pd.concat([folds, pd.DataFrame([{"image": rel, "label": "dog", "fold": 0}])]).to_csv(
        root / "folds.csv", index=False
    )
    capsys.readouterr()

    figures = inspect_data(load_competition("pets"), samples=3)
    out = capsys.readouterr().out
    assert "classes are unbalanced" in out and figures["imbalance_ratio"] > 3
    assert figures["train_counts"]["cat"] > figures["train_counts"]["dog"]
    assert "dropped by the source" in out and figures["dropped"]["corrupt"] == 2
    assert figures["leaking_groups"] == 1 and "cross train/test" in out and "leak" in out
    assert figures["conflicting_groups"] == 1 and "span two classes" in out
    assert "image size (shorter side, px)" in out and "(test, unlabelled)" in out
    sheet = Image.open(figures["contact_sheet"])
    assert sheet.size == (140 + 3 * 100 + 4, 2 * 100 + 4)  # one row per class, three samples each
    # the hashes are cached: a second look reads only what changed
    cache = root / "inspect" / "hashes.csv"
    assert len(pd.read_csv(cache)) == len(folds) + 1 + len(list((root / "test").iterdir()))
    assert main(["inspect", "--comp", "pets", "--samples", "2"]) == 0


def test_inspect_needs_prepared_data(workdir, capsys):
    assert main(["inspect", "--comp", "digits-demo"]) == 2
    assert "not prepared yet" in capsys.readouterr().out


def test_tiny_images_count_only_exact_copies(digits, capsys):
    """digits-demo's 28-px digits: the 8x8 perceptual hash calls different images of one digit
    "near duplicates" (it found ~100 groups, 43 of them "leaking"); exact copies are still caught."""
    comp = load_competition("digits-demo")
    figures = inspect_data(comp, samples=1)
    out = " ".join(capsys.readouterr().out.split())
    assert figures["exact_only_images"] == 1797
    assert figures["near_duplicate_groups"] == 0 and figures["leaking_groups"] == 0
    assert figures["conflicting_groups"] == 0
    assert "near-duplicate groups (exact copies only: every image is under 64 px" in out

    root = digits / "data" / "digits-demo"
    folds = pd.read_csv(root / "folds.csv")
    first, second = folds["image"].iloc[0], folds["image"].iloc[-1]
    shutil.copyfile(root / first, root / "test" / "leak.png")  # a training image in the test set
    label = "0" if not first.startswith("train/0/") else "1"
    (root / "train" / label / "mislabelled.png").write_bytes((root / first).read_bytes())
    row = {"image": f"train/{label}/mislabelled.png", "label": label, "fold": 0}
    pd.concat([folds, pd.DataFrame([row])]).to_csv(root / "folds.csv", index=False)
    # an older hashes.csv (no content column) is measured again, not misread
    cache = root / "inspect" / "hashes.csv"
    pd.read_csv(cache).drop(columns=["content"]).to_csv(cache, index=False)
    figures = inspect_data(comp, samples=1)
    out = " ".join(capsys.readouterr().out.split())
    assert figures["leaking_groups"] == 1 and figures["conflicting_groups"] == 1
    assert figures["near_duplicate_groups"] == 1  # one group of three: the original and both copies
    assert "test/leak.png" in out and f"{first} " in out and second not in out


def test_duplicate_groups_by_size():
    from kagglecv.prepare.inspect import duplicate_groups

    table = pd.DataFrame(
        {  # same perceptual hash for all; big ones group by it, tiny ones only by identical pixels
            "width": [200, 300, 28, 28, 28],
            "height": [150, 300, 28, 28, 28],
            "phash": ["ffff000000000000"] * 5,
            "content": ["a", "b", "c", "d", "c"],
        }
    )
    groups = duplicate_groups(table, distance=6)
    assert groups[0] == groups[1]  # big: within 6 bits
    assert groups[2] == groups[4] and len({groups[0], groups[2], groups[3]}) == 3
