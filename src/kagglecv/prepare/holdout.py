"""Layout `holdout`: raw/<class>/... (from the scrape or folder source) -> train/<class>/ plus a
stratified, labelled holdout written exactly like a Kaggle test set, so `make submit` scores it.

    raw/manifest.csv + raw/<class>/**/<img>   ->   train/<class>/<img>       (k-fold train/validation)
                                                   test/<id>.<ext>           (holdout, ids hide the class)
                                                   solution.csv              id,label  (the holdout's truth)
                                                   sample_submission.csv     id,label
                                                   groups.csv                image,group (near duplicates)

Near duplicates (perceptual hashes within `group_distance` bits) form groups: a group goes wholly to
the holdout or wholly to train, and groups.csv lets the folds keep it in one fold too, so neither the
holdout score nor the CV score is flattered by near-copies on both sides.

competitions/<slug>.yaml:
    layout: {kind: holdout, holdout: 0.05, group_distance: 6, seed: 0}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from kagglecv.core.competition import Competition
from kagglecv.core.console import console, track
from kagglecv.core.errors import UserError
from kagglecv.core.images import IMAGE_EXTS, check_image, export_rgb, hash_ints, near_groups
from kagglecv.prepare.folds import GROUPS
from kagglecv.prepare.verify import measure_many

MANIFEST = "manifest.csv"
# Perceptual-hash bits within which two images count as the same picture for grouping; looser
# values chain unrelated look-alikes (plain backgrounds, tiny images) into huge groups.
GROUP_DISTANCE = 6


def kept_images(raw: Path) -> pd.DataFrame:
    """file (relative to raw/), class, sha256, phash of every kept image: from manifest.csv when the
    source wrote one, else by hashing raw/<class>/** (a hand-made raw/ folder)."""
    manifest = raw / MANIFEST
    if manifest.exists():
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        missing = {"file", "class", "sha256", "phash", "status"} - set(df.columns)
        if missing:
            raise UserError(f"{manifest}: missing columns {sorted(missing)}; rerun `make data FORCE=1`")
        return df[df["status"] == "kept"][["file", "class", "sha256", "phash"]].reset_index(drop=True)
    files = [
        (p, d.name)
        for d in sorted(raw.iterdir())
        if d.is_dir()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS
    ]
    checks = measure_many([p for p, _ in files], description="hashing images", fn=_check_file)
    rows = [
        (path.relative_to(raw).as_posix(), cls, *check)
        for (path, cls), check in zip(files, checks, strict=True)
        if check is not None
    ]
    return pd.DataFrame(rows, columns=["file", "class", "sha256", "phash"])


def _check_file(path: Path) -> tuple[str, str] | None:
    """(sha256, phash) of an image that decodes, else None: the hash `make data` and `inspect` use."""
    check = check_image(path.read_bytes(), min_size=1)
    return (check.sha256, check.phash) if check.ok else None


def holdout_mask(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the images held out: about `fraction` of every class (at least one image of each
    class with two or more), taking whole near-duplicate groups in a seeded random order."""
    classes, counts = np.unique(labels, return_counts=True)
    target = {c: (max(1, round(fraction * n)) if n >= 2 else 0) for c, n in zip(classes, counts, strict=True)}
    taken = dict.fromkeys(classes, 0)
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    unique_groups = np.unique(groups)
    for g in rng.permutation(unique_groups):
        members = np.flatnonzero(groups == g)
        need = pd.Series(labels[members]).value_counts()
        if all(taken[c] + k <= target[c] for c, k in need.items()):
            mask[members] = True
            for c, k in need.items():
                taken[c] += k
        if all(taken[c] >= target[c] for c in classes):
            break
    return mask


def _flat_name(rel_in_class: str) -> str:
    """ "sub/dir/cat 1.jpeg" -> "sub__dir__cat 1": nested folders flattened, readable, unique."""
    stem = Path(rel_in_class).with_suffix("").as_posix()
    return stem.replace("/", "__")


def holdout_options(comp: Competition) -> tuple[float, int, int]:
    """(holdout fraction, group_distance, seed): the layout's typed options (competition.HoldoutLayout),
    checked when the competition loads."""
    opts = comp.layout_options
    return opts.holdout, opts.group_distance, opts.seed


def layout_holdout(comp: Competition, raw: Path, out: Path) -> None:
    fraction, group_distance, seed = holdout_options(comp)
    images = kept_images(raw)
    if images.empty:
        raise UserError(
            f"no usable images in {raw}/: see the report above, add images and rerun with FORCE=1"
        )
    per_class = images["class"].value_counts()
    if len(per_class) < 2:
        raise UserError(
            f"{raw}/ holds images of only {len(per_class)} class(es); a classifier needs two or more"
        )
    groups = near_groups(hash_ints(images["phash"].tolist()), group_distance)
    labels = images["class"].to_numpy()
    is_test = holdout_mask(labels, groups, fraction, seed)

    (out / "test").mkdir(parents=True)
    train_rows, test_rows = [], []
    for i, row in track(list(images.iterrows()), "writing train/ and the holdout"):
        src = raw / row["file"]
        cls = row["class"]
        if is_test[i]:
            written = export_rgb(src, out / "test" / row["sha256"][:16])
            test_rows.append((written.stem, cls))
        else:
            rel = Path(row["file"]).relative_to(cls).as_posix()
            written = export_rgb(src, out / "train" / cls / _flat_name(rel))
            train_rows.append((written.relative_to(out).as_posix(), f"g{groups[i]}"))

    sub = comp.submission
    test_ids = [i for i, _ in test_rows]
    pd.DataFrame({sub.id_column: test_ids, "label": [c for _, c in test_rows]}).to_csv(
        out / "solution.csv", index=False
    )
    sample = pd.DataFrame({sub.id_column: test_ids})
    first = sorted(per_class.index)[0]
    if sub.kind == "class_name":
        sample[sub.label_columns[0]] = first
    elif sub.kind == "class_index":
        sample[sub.label_columns[0]] = 0
    elif sub.kind == "probability":
        sample[sub.label_columns[0]] = 0.5
    else:
        for cls in sorted(per_class.index):
            sample[cls] = 1.0 / len(per_class)
    sample.to_csv(out / "sample_submission.csv", index=False)
    pd.DataFrame(train_rows, columns=["image", "group"]).to_csv(out / GROUPS, index=False)
    _report(images, is_test, groups, fraction)


def _report(images: pd.DataFrame, is_test: np.ndarray, groups: np.ndarray, fraction: float) -> None:
    table = Table(title=f"holdout: {fraction:.0%} per class, near duplicates on one side")
    for col in ("class", "train", "holdout", "near-duplicate groups"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for cls in sorted(images["class"].unique()):
        sel = (images["class"] == cls).to_numpy()
        sizes = pd.Series(groups[sel]).value_counts()
        table.add_row(
            escape(cls),
            str(int((sel & ~is_test).sum())),
            str(int((sel & is_test).sum())),
            str(int((sizes > 1).sum())),
        )
    console.print(table)
