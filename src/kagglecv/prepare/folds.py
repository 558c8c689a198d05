"""folds.csv: the fixed stratified k-fold split `make data` writes, and its one checked reader.

    data/<comp>/folds.csv    image,label,fold[,group]   (image relative to data/<comp>/, fold
                             0..n_folds-1; group where images must share a fold: task.group_column,
                             or near duplicates of a holdout layout)

`make_folds` is deterministic (same images and seed -> same folds; near-duplicate groups share a
fold); `read_folds` is what every later stage reads, so a hand-edited file that would train on a
broken split (a class missing from a training split, an image in two folds) stops there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from rich.markup import escape

from kagglecv.core.competition import Competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.images import IMAGE_EXTS
from kagglecv.core.tables import read_csv
from kagglecv.prepare.prepared import PreparedInfo

FOLDS = "folds.csv"
GROUPS = "groups.csv"  # image,group: written by a layout beside train/, read when making the folds


def list_train_images(train_dir: Path) -> pd.DataFrame:
    """All images under train/<class>/ (nested folders allowed), sorted so folds are stable."""
    rows = []
    for cls_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        for img in sorted(cls_dir.rglob("*")):
            if img.suffix.lower() in IMAGE_EXTS and img.is_file():
                rows.append((img.relative_to(train_dir.parent).as_posix(), cls_dir.name))
    return pd.DataFrame(rows, columns=["image", "label"])


def make_folds(
    images: pd.DataFrame, n_folds: int, seed: int, groups: pd.Series | None = None, group_name: str = "group"
) -> pd.DataFrame:
    """A fixed stratified k-fold assignment: same images and seed -> same folds, run after run.
    With `groups` (one per image: a patient id, a near-duplicate group) every group lies in one
    fold, and folds.csv records it in a `group` column; `group_name` names them in errors."""
    counts = images["label"].value_counts()
    if counts.min() < n_folds:
        small = ", ".join(f"{c} ({n})" for c, n in counts[counts < n_folds].items())
        lower = f", or set n_folds: {counts.min()}" if counts.min() >= 2 else ""
        raise UserError(
            f"too few images for {n_folds} folds in class(es) {small}: every class needs at least "
            f"n_folds images; add images{lower}"
        )
    # scikit-learn only here: a `kagglecv data` that stops earlier (no credentials, a typo) starts fast
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    # sort with the groups attached, so a group stays with its image whatever order came in
    recorded = groups is not None
    images = images.assign(_group=groups if recorded else images["image"])
    images = images.sort_values("image").reset_index(drop=True)
    groups = images.pop("_group").astype(str)
    if (groups == images["image"]).all():
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(images["image"], images["label"])
    else:
        if groups.nunique() < n_folds:
            raise UserError(
                f"{groups.nunique()} {group_name} group(s) cannot fill n_folds: {n_folds} folds (all "
                f"images of a group share a fold){_fewer_folds(groups.nunique())}"
            )
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(images["image"], images["label"], groups)
    fold = np.zeros(len(images), dtype=int)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    folds = images.assign(fold=fold)
    if recorded:
        folds = folds.assign(group=groups)
        _check_grouped_classes(folds, group_name)
    return folds


def _fewer_folds(most: int) -> str:
    return f"; set n_folds: {most} or fewer" if most >= 2 else ""


def _check_grouped_classes(folds: pd.DataFrame, group_name: str) -> None:
    """Every class in two folds at least, so every training split has it: a class whose images all
    come from one group (one patient) cannot be, whatever n_folds is."""
    for label, rows in folds.groupby("label"):
        if rows["fold"].nunique() < 2:
            n = rows["group"].nunique()
            raise UserError(
                f"class {label!r}: all its {len(rows)} images come from {n} {group_name} group(s), all "
                f"in fold {rows['fold'].iloc[0]}, so the model of that fold never sees the class in "
                "training; a class needs images from two groups or more"
            )


def describe_groups(folds: pd.DataFrame, group_name: str) -> str:
    """'6 groups of patient_id (the largest: 3 images), each in one fold', for `make data`'s summary."""
    sizes = folds["group"].value_counts()
    return f"{len(sizes)} groups of {group_name} (the largest: {int(sizes.iloc[0])} images), each in one fold"


def too_few_for_folds(comp: Competition, counts: pd.Series, held: pd.Series | None) -> UserError:
    """Which classes cannot fill n_folds folds, how many images each class needs, and the fix that
    can work (n_folds cannot go below 2; a holdout takes its share of each class first)."""
    k = comp.n_folds
    small = counts[counts < k]
    if held is not None:
        fraction = comp.layout_options.holdout
        least = next(n for n in range(k, 100 * k) if n - max(1, round(fraction * n)) >= k)
        listing = ", ".join(
            f"{c} ({n + int(held.get(c, 0))} images, {n} left after the holdout)" for c, n in small.items()
        )
        need = f"every class needs at least {least} images ({k} for the folds, the rest for the holdout)"
    else:
        listing = ", ".join(f"{c} ({n} images)" for c, n in small.items())
        need = f"every class needs at least n_folds = {k} training images"
    if comp.source_kind == "folder":
        folder = f"{small.index[0]}/" if len(small) == 1 else "<class>/"
        fix = f"add images to {Path(str(comp.source.get('path')))}/{folder} and rerun with FORCE=1 (to read it again)"
    elif comp.source_kind == "scrape":
        fix = "raise source.count or add queries for those classes, and rerun with FORCE=1"
    else:
        fix = "add images"
    lowest = int(counts.min())
    if lowest >= 2:  # k-fold needs two folds at least: below that, fewer folds cannot help
        fix += f", or set n_folds: {lowest}"
    return UserError(f"{comp.path}: too few images for n_folds: {k} in class(es) {listing}; {need}: {fix}")


def read_folds(comp: Competition, info: PreparedInfo) -> pd.DataFrame:
    """data/<comp>/folds.csv (image, label, fold), checked: every later stage trusts what this
    returns. Fold ids are exactly 0..n_folds-1, each image is listed once, every class is in every
    training split (else a model is scored on a class it never saw); a validation fold without some
    class is a warning."""
    folds_path = comp.data_dir / FOLDS
    folds = read_csv(folds_path, "folds")
    redo = f"delete it and run `make data COMP={comp.slug}` to split again (nothing is fetched again)"
    missing_cols = {"image", "label", "fold"} - set(folds.columns)
    if missing_cols:
        raise UserError(
            f"{folds_path} lacks column(s) {sorted(missing_cols)} (it needs image,label,fold); {redo}"
        )
    fold_col = pd.to_numeric(folds["fold"], errors="coerce")
    not_a_fold = fold_col.isna() | (fold_col < 0) | (fold_col % 1 != 0) | (fold_col >= comp.n_folds)
    if not_a_fold.any():
        bad = folds["fold"][not_a_fold].iloc[0]
        shown = repr(bad) if isinstance(bad, str) else bad
        raise UserError(
            f"{folds_path}: fold {shown} is not a fold number: {comp.path} says n_folds: {comp.n_folds}, "
            f"so folds are 0..{comp.n_folds - 1}; {redo}"
        )
    folds["fold"] = fold_col.astype(int)
    folds["label"] = folds["label"].astype(str)
    empty = sorted(set(range(comp.n_folds)) - set(folds["fold"]))
    if empty:
        raise UserError(f"{folds_path}: fold {empty[0]} has no images (n_folds: {comp.n_folds}); {redo}")
    repeated = folds["image"][folds["image"].duplicated()]
    if len(repeated):
        raise UserError(
            f"{folds_path}: {repeated.iloc[0]} is listed {int((folds['image'] == repeated.iloc[0]).sum())} "
            f"times ({len(repeated)} repeated rows); each image belongs to exactly one fold; {redo}"
        )
    _check_fold_classes(folds, info.classes, folds_path, redo)
    _check_fold_groups(comp, folds, folds_path, redo)
    escaping = escaping_image(comp.data_dir, folds["image"])
    if escaping is not None:
        raise UserError(
            f"{folds_path}: image {escaping!r} is not a path inside {comp.data_dir}/ (empty, absolute, "
            f"'..' or a link leading out); kagglecv reads and caches only images inside it; {redo}"
        )
    return folds


def escaping_image(root: Path, images: Iterable[object]) -> str | None:
    """The first of `images` (paths relative to `root`, as folds.csv lists them) that leads out of
    `root`: empty, absolute, with a `..` or a NUL, or through a symlink (a folder or the file) whose
    target lies elsewhere; None when all stay inside. Every folder is resolved once."""
    real = root.resolve()
    folders: dict[Path, bool] = {}
    for image in images:
        text = "" if pd.isna(image) else str(image)
        rel = PurePosixPath(text)
        if not text or "\0" in text or rel.is_absolute() or ".." in rel.parts:
            return text
        path = root / rel
        if path.parent not in folders:
            folders[path.parent] = path.parent.resolve().is_relative_to(real)
        if not folders[path.parent] or (path.is_symlink() and not path.resolve().is_relative_to(real)):
            return text
    return None


def _check_fold_groups(comp: Competition, folds: pd.DataFrame, folds_path: Path, redo: str) -> None:
    """Every group (a patient, near duplicates) in one fold: else the same patient is in a model's
    training and validation images, and CV is flattered."""
    column = comp.task.group_column
    if "group" not in folds.columns:
        if column:
            raise UserError(
                f"{folds_path} has no group column, but {comp.path} groups images by task.group_column: "
                f"{column}; {redo}"
            )
        return
    empty = folds["group"].isna() | (folds["group"].astype(str).str.strip() == "")
    if empty.any():
        raise UserError(f"{folds_path}: image {folds['image'][empty].iloc[0]} has an empty group; {redo}")
    per_group = folds.groupby(folds["group"].astype(str))["fold"].unique()
    split = per_group[per_group.map(len) > 1]
    if len(split):
        group, in_folds = split.index[0], sorted(int(k) for k in split.iloc[0])
        raise UserError(
            f"{folds_path}: group {group!r} has images in folds {', '.join(map(str, in_folds))} "
            f"({len(split)} split group(s)); all images of a group must share a fold, or validation "
            f"scores images whose group the model trained on; {redo}"
        )


def _check_fold_classes(folds: pd.DataFrame, classes: list[str], folds_path: Path, redo: str) -> None:
    unknown = set(folds["label"]) - set(classes)
    if unknown:
        raise UserError(f"{folds_path}: labels {sorted(unknown)[:5]} are not class folders; {redo}")
    per_fold = pd.crosstab(folds["fold"], folds["label"]).reindex(columns=classes, fill_value=0)
    in_training = per_fold.sum() - per_fold  # images of each class outside each fold
    for k, row in in_training.iterrows():
        absent = [c for c in classes if row[c] == 0]
        if absent:
            raise UserError(
                f"{folds_path}: class {absent[0]!r} has no training images when fold {k} is held out "
                f"(all of them are in fold {k}), so that model could never predict it; {redo}"
            )
    gaps = [(k, c) for k, row in per_fold.iterrows() for c in classes if row[c] == 0]
    if gaps:
        shown = ", ".join(f"{c!r} in fold {k}" for k, c in gaps[:5])
        console.print(
            f"[yellow]warning:[/] {escape(str(folds_path))}: no validation images of {escape(shown)}"
            f"{' ...' if len(gaps) > 5 else ''}: those folds' scores leave the class out",
            soft_wrap=True,
        )
