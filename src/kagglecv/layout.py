"""Raw files -> the prepared shape every later stage reads, plus a fixed stratified k-fold split.

    data/<comp>/raw/                 files as obtained, never modified
    data/<comp>/train/<class>/<img>  labelled images, one folder per class
    data/<comp>/test/<img>           images to predict
    data/<comp>/sample_submission.csv
    data/<comp>/solution.csv         test labels (id column + `label`), only where known locally
    data/<comp>/folds.csv            image, label, fold
    data/<comp>/prepared.json        written last: its presence means the shape above is complete

Each layout kind is a small function `(comp, raw_dir, out_dir)` that writes train/, test/ and the two
CSVs into a staging folder; `prepare` swaps the staging folder in only when it is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from rich.markup import escape
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from . import sources
from .competition import Competition, remember_last
from .console import console, track
from .errors import UserError
from .holdout import GROUPS, holdout_options, layout_holdout
from .images import IMAGE_EXTS

PREPARED = "prepared.json"
FOLDS = "folds.csv"


def _write_png(path: Path, pixels: np.ndarray) -> None:
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"could not write {path}")


def read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"{what}: expected {path}, which is missing (check the competition's layout)")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None


def _pixel_rows_to_pngs(frame: pd.DataFrame, pixel_cols: list[str], paths: list[Path], desc: str) -> None:
    side = int(round(len(pixel_cols) ** 0.5))
    if side * side != len(pixel_cols):
        raise UserError(f"{desc}: {len(pixel_cols)} pixel columns do not make a square image")
    pixels = frame[pixel_cols].to_numpy()
    if pixels.min() < 0 or pixels.max() > 255:
        raise UserError(f"{desc}: pixel values must lie in 0..255")
    pixels = pixels.astype(np.uint8).reshape(len(frame), side, side)
    for path, img in track(list(zip(paths, pixels, strict=True)), desc):
        _write_png(path, img)


def layout_csv_pixels(comp: Competition, raw: Path, out: Path) -> None:
    """Pixels in CSV rows (digit-recognizer): one row per image, `label` then pixel0..pixelN."""
    opts = comp.layout
    label_col = opts.get("label_column", "label")
    train = read_csv(raw / opts.get("train_csv", "train.csv"), "train CSV")
    test = read_csv(raw / opts.get("test_csv", "test.csv"), "test CSV")
    if label_col not in train.columns:
        raise UserError(
            f"{raw / opts.get('train_csv', 'train.csv')}: no '{label_col}' column (layout.label_column)"
        )
    pixel_cols = [c for c in train.columns if c != label_col]
    labels = train[label_col].astype(str)
    for cls in sorted(labels.unique()):
        (out / "train" / cls).mkdir(parents=True)
    (out / "test").mkdir(parents=True)
    _pixel_rows_to_pngs(
        train, pixel_cols, [out / "train" / lab / f"{i}.png" for i, lab in enumerate(labels)], "train images"
    )
    if list(test.columns) != pixel_cols:
        raise UserError(
            f"{raw / opts.get('test_csv', 'test.csv')}: columns differ from the train CSV's pixel columns"
        )
    start = int(opts.get("id_start", 1))
    _pixel_rows_to_pngs(
        test, pixel_cols, [out / "test" / f"{i + start}.png" for i in range(len(test))], "test images"
    )
    _copy_csvs(comp, raw, out)


def _copy_csvs(comp: Competition, raw: Path, out: Path) -> None:
    sample = raw / comp.layout.get("sample_submission", "sample_submission.csv")
    if not sample.exists():
        raise UserError(f"{sample} is missing: every competition needs a sample submission")
    shutil.copyfile(sample, out / "sample_submission.csv")
    if (raw / "solution.csv").exists():
        shutil.copyfile(raw / "solution.csv", out / "solution.csv")


def _place(src: Path, dst: Path) -> None:
    """Hard-link (no second copy on disk; raw/ is never modified), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _image_dir(raw: Path, opts: dict, key: str, default: str) -> tuple[Path, list[Path]]:
    folder = raw / opts.get(key, default)
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in raw.iterdir())[:10]) if raw.is_dir() else "nothing"
        raise UserError(f"{folder} is missing (layout.{key}); {raw}/ holds: {found}")
    return folder, sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _write_split(comp: Competition, raw: Path, out: Path, pairs: list[tuple[Path, str]]) -> None:
    """train/<class>/ from (image, class) pairs, test/ from layout.test_dir, then the CSVs."""
    for cls in sorted({c for _, c in pairs}):
        (out / "train" / cls).mkdir(parents=True)
    for src, cls in track(pairs, "train images"):
        _place(src, out / "train" / cls / src.name)
    _, tests = _image_dir(raw, comp.layout, "test_dir", "test")
    (out / "test").mkdir()
    for src in track(tests, "test images"):
        _place(src, out / "test" / src.name)
    _copy_csvs(comp, raw, out)


def layout_label_in_name(comp: Competition, raw: Path, out: Path) -> None:
    """Class in the file name (dogs-vs-cats: train/cat.0.jpg): layout.pattern's first group."""
    folder, images = _image_dir(raw, comp.layout, "train_dir", "train")
    pattern = re.compile(comp.layout.get("pattern", r"^([^.]+)\."))
    matches = [(p, pattern.match(p.name)) for p in images]
    bad = [p.name for p, m in matches if not m]
    if bad:
        raise UserError(
            f"{len(bad)} of {len(images)} files in {folder} do not match layout.pattern "
            f"{pattern.pattern!r} (e.g. {bad[0]})"
        )
    _write_split(comp, raw, out, [(p, m.group(1)) for p, m in matches])


def layout_csv_labels(comp: Competition, raw: Path, out: Path) -> None:
    """Class in a CSV beside the images (dog-breed labels.csv id,breed): the id is the image's
    name or stem (layout.image_ext completes ids without one)."""
    opts = comp.layout
    csv_path = raw / opts.get("labels_csv", "train.csv")
    labels = read_csv(csv_path, "labels CSV")
    id_col, label_col = opts.get("id_column", "id"), opts.get("label_column", "label")
    for col in (id_col, label_col):
        if col not in labels.columns:
            raise UserError(f"{csv_path}: no '{col}' column (columns: {', '.join(labels.columns[:10])})")
    folder, images = _image_dir(raw, opts, "train_dir", "train")
    by_name = {p.name: p for p in images} | {p.stem: p for p in images}
    ext = opts.get("image_ext", "")
    pairs, missing = [], []
    for image_id, label in zip(labels[id_col].astype(str), labels[label_col].astype(str), strict=True):
        src = by_name.get(image_id) or by_name.get(image_id + ext)
        if src is None:
            missing.append(image_id)
        else:
            pairs.append((src, label))
    if missing:
        raise UserError(
            f"{len(missing)} ids of {csv_path.name} have no image in {folder} (e.g. {missing[0]})"
        )
    _write_split(comp, raw, out, pairs)


def layout_class_folders(comp: Competition, raw: Path, out: Path) -> None:
    """One folder per class already (plant-seedlings: train/<Species>/*.png)."""
    folder, images = _image_dir(raw, comp.layout, "train_dir", "train")
    pairs = [(p, p.relative_to(folder).parts[0]) for p in images if len(p.relative_to(folder).parts) > 1]
    if len(pairs) != len(images):
        raise UserError(
            f"{folder} has images outside class folders (layout class_folders wants {folder}/<class>/)"
        )
    _write_split(comp, raw, out, pairs)


LAYOUTS: dict[str, Callable[[Competition, Path, Path], None]] = {
    "csv_pixels": layout_csv_pixels,
    "label_in_name": layout_label_in_name,
    "csv_labels": layout_csv_labels,
    "class_folders": layout_class_folders,
    "holdout": layout_holdout,  # own classes (scrape/folder sources): train/ + a labelled holdout
}


def list_train_images(train_dir: Path) -> pd.DataFrame:
    """All images under train/<class>/ (nested folders allowed), sorted so folds are stable."""
    rows = []
    for cls_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        for img in sorted(cls_dir.rglob("*")):
            if img.suffix.lower() in IMAGE_EXTS and img.is_file():
                rows.append((img.relative_to(train_dir.parent).as_posix(), cls_dir.name))
    return pd.DataFrame(rows, columns=["image", "label"])


def make_folds(
    images: pd.DataFrame, n_folds: int, seed: int, groups: pd.Series | None = None
) -> pd.DataFrame:
    """A fixed stratified k-fold assignment: same images and seed -> same folds, run after run."""
    counts = images["label"].value_counts()
    if counts.min() < n_folds:
        small = ", ".join(f"{c} ({n})" for c, n in counts[counts < n_folds].items())
        lower = f", or set n_folds: {counts.min()}" if counts.min() >= 2 else ""
        raise UserError(
            f"too few images for {n_folds} folds in class(es) {small}: every class needs at least "
            f"n_folds images; add images{lower}"
        )
    # sort with the groups attached, so a group stays with its image whatever order came in
    images = images.assign(_group=groups if groups is not None else images["image"])
    images = images.sort_values("image").reset_index(drop=True)
    groups = images.pop("_group")
    if (groups == images["image"]).all():
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(images["image"], images["label"])
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(images["image"], images["label"], groups)
    fold = np.zeros(len(images), dtype=int)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return images.assign(fold=fold)


def is_prepared(comp: Competition) -> bool:
    return (comp.data_dir / PREPARED).exists()


def fetch_raw(comp: Competition, force: bool = False) -> Path:
    """data/<comp>/raw/ as the source delivers it, fetched once (`force` fetches again). An old raw/
    (and the preparation made from it) is replaced only once the new fetch is complete."""
    raw = comp.data_dir / "raw"
    if force or not raw.exists():
        partial = comp.data_dir / "raw.partial"
        shutil.rmtree(partial, ignore_errors=True)
        comp.data_dir.mkdir(parents=True, exist_ok=True)
        console.print(f"fetching {escape(comp.slug)} ({comp.source_kind}) into {escape(str(raw))}/")
        try:
            sources.fetch(comp, partial)
        except BaseException:
            if comp.data_dir.is_dir() and not any(comp.data_dir.iterdir()):
                comp.data_dir.rmdir()  # a fetch that brought nothing leaves no empty folder behind
            raise
        (comp.data_dir / PREPARED).unlink(missing_ok=True)  # made from the raw/ about to go
        shutil.rmtree(raw, ignore_errors=True)
        partial.rename(raw)  # raw/ exists only once everything arrived
    return raw


def check_before_fetch(comp: Competition, fetching: bool) -> None:
    """Every mistake findable without downloading, found before anything is fetched or removed: the
    layout's kind and options, and (when the source will be read) the source's own checks."""
    if comp.layout["kind"] not in LAYOUTS:
        raise UserError(
            f"{comp.path}: layout.kind must be one of {', '.join(LAYOUTS)}, got {comp.layout['kind']!r}"
        )
    if comp.layout["kind"] == "holdout":
        holdout_options(comp)
    if fetching:
        sources.check(comp)


def _too_few_for_folds(comp: Competition, counts: pd.Series, held: pd.Series | None) -> UserError:
    """Which classes cannot fill n_folds folds, how many images each class needs, and the fix that
    can work (n_folds cannot go below 2; a holdout takes its share of each class first)."""
    k = comp.n_folds
    small = counts[counts < k]
    if held is not None:
        fraction = holdout_options(comp)[0]
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


def prepare(comp: Competition, force: bool = False, seed: int = 42) -> Path:
    """Fetch raw files (once) and lay them out in the prepared shape. Idempotent; `force` redoes it.

    Nothing is removed before the competition file and the source have been checked, and raw/ is
    replaced only by a complete new fetch, so a failure leaves either the previous preparation or a
    complete raw/ that a plain rerun lays out again without fetching."""
    root = comp.data_dir
    if is_prepared(comp) and not force:
        console.print(
            f"[green]✓[/] {escape(comp.slug)} already prepared in {escape(str(root))}/ "
            "(FORCE=1 / --force redoes it)"
        )
        remember_last(comp.slug)
        return root
    check_before_fetch(comp, fetching=force or not (root / "raw").exists())
    had_preparation = is_prepared(comp)
    try:
        raw = fetch_raw(comp, force)
    except UserError as e:
        if force and had_preparation:  # the fetch failed before touching the old raw/ or preparation
            raise UserError(
                f"{e}\n(FORCE changed nothing: {root}/ still holds the previous preparation)"
            ) from None
        raise
    (root / PREPARED).unlink(missing_ok=True)  # from here on, the folder is not complete
    staging = root / ".staging"
    try:
        info = _lay_out(comp, raw, staging, seed)
    except UserError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if force:
            raise UserError(
                f"{e}\nThe raw data in {raw}/ is intact: after a fix to {comp.path}, `make data "
                f"COMP={comp.slug}` (without FORCE) lays it out again, with no new fetch"
            ) from None
        raise
    (root / PREPARED).write_text(json.dumps(info, indent=2))
    remember_last(comp.slug)
    console.print(
        f"[green]✓[/] prepared {escape(comp.slug)}: {info['n_train']} train images in "
        f"{len(info['classes'])} classes, {info['n_test']} test images, {comp.n_folds} folds "
        f"-> {escape(str(root))}/"
    )
    return root


def _lay_out(comp: Competition, raw: Path, staging: Path, seed: int) -> dict:
    """raw/ -> the prepared shape in `staging`, swapped into data/<comp>/ once complete; returns
    what prepared.json records."""
    root = comp.data_dir
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    LAYOUTS[comp.layout["kind"]](comp, raw, staging)
    from .verify import IMAGES, verify_images  # the one decode: drops what will not decode

    unreadable = verify_images(staging)
    images = list_train_images(staging / "train")
    if images.empty:
        raise UserError(f"{comp.slug}: the layout found no labelled training images in {raw}/")
    counts = images["label"].value_counts()
    if counts.min() < comp.n_folds:
        held = None
        if comp.layout["kind"] == "holdout":
            held = pd.read_csv(staging / "solution.csv", dtype=str)["label"].value_counts()
        raise _too_few_for_folds(comp, counts, held)
    groups = None
    if (staging / GROUPS).exists():  # near duplicates that must share a fold (layout holdout)
        known = pd.read_csv(staging / GROUPS, dtype=str).set_index("image")["group"]
        groups = images["image"].map(known).fillna(images["image"])
    folds = make_folds(images, comp.n_folds, seed, groups)
    folds.to_csv(staging / FOLDS, index=False)
    for name in ("train", "test", "sample_submission.csv", "solution.csv", FOLDS, IMAGES):
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if (staging / name).exists():
            (staging / name).rename(target)
    shutil.rmtree(staging)
    counts = folds["label"].value_counts().sort_index()
    return {
        "competition": comp.slug,
        "classes": sorted(counts.index.tolist()),
        "train_counts": {k: int(v) for k, v in counts.items()},
        "n_train": int(len(folds)),
        "n_test": sum(1 for p in (root / "test").iterdir() if p.suffix.lower() in IMAGE_EXTS),
        "n_folds": comp.n_folds,
        "fold_seed": seed,
        "has_solution": (root / "solution.csv").exists(),
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **unreadable,
    }


def read_folds(comp: Competition, info: dict) -> pd.DataFrame:
    """data/<comp>/folds.csv (image, label, fold), checked: every later stage trusts what this returns."""
    root = comp.data_dir
    folds_path = root / FOLDS
    folds = read_csv(folds_path, "folds")
    redo = f"rerun `make data COMP={comp.slug} FORCE=1` to write it again"
    missing_cols = {"image", "label", "fold"} - set(folds.columns)
    if missing_cols:
        raise UserError(
            f"{folds_path} lacks column(s) {sorted(missing_cols)} (it needs image,label,fold); {redo}"
        )
    fold_col = pd.to_numeric(folds["fold"], errors="coerce")
    not_a_fold = fold_col.isna() | (fold_col < 0) | (fold_col % 1 != 0)
    if not_a_fold.any():
        bad = folds["fold"][not_a_fold].iloc[0]
        raise UserError(f"{folds_path}: fold {bad!r} is not a fold number (0, 1, ...); {redo}")
    folds["fold"] = fold_col.astype(int)
    if folds["fold"].nunique() < 2 or len(folds) == 0:
        raise UserError(f"{folds_path} needs at least 2 folds with images; {redo}")
    classes = [str(c) for c in info["classes"]]
    labels = folds["label"].astype(str)
    unknown = set(labels) - set(classes)
    if unknown:
        raise UserError(
            f"{folds_path}: labels {sorted(unknown)[:5]} are not class folders; rerun `make data COMP={comp.slug} FORCE=1`"
        )
    return folds


def read_prepared(comp: Competition) -> dict:
    path = comp.data_dir / PREPARED
    if not path.exists():
        raise UserError(f"{comp.slug} is not prepared yet: run `make data COMP={comp.slug}` first")
    return json.loads(path.read_text())
