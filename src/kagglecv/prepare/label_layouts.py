"""The layout kinds for Kaggle-shaped files: each is a function `(comp, raw, out)` that writes
out/train/<class>/, out/test/ and the CSVs from raw/ (layout.py runs it in a staging folder).

    csv_pixels     train.csv rows of label,pixel0..pixelN -> PNGs (digit-recognizer)
    label_in_name  train/cat.0.jpg: the class from the file name (dogs-vs-cats)
    csv_labels     train/<id>.jpg + labels.csv id,label (dog-breed-identification), or one-hot
                   columns (plant-pathology-2020); task.group_column: groups.csv (siim-isic patients)
    class_folders  train/<class>/*.png (plant-seedlings-classification)

Their options are the typed blocks in core/competition.py (CsvPixelsLayout, ...). Every class name passes
competition.check_class_name and every target stays inside out/ (competition.inside). Images are
hard-linked from raw/ where the disk allows (files.link_or_copy) and never opened for writing, so
raw/ is never changed; an image in a nested folder keeps its sub-path in its name (a/x.png ->
a__x.png), so same-named images in different folders are all kept.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from kagglecv.core.competition import Competition, CsvLabelsLayout, check_class_name, inside
from kagglecv.core.console import track
from kagglecv.core.errors import UserError
from kagglecv.core.files import link_or_copy
from kagglecv.core.images import IMAGE_EXTS
from kagglecv.core.tables import read_csv
from kagglecv.prepare.folds import GROUPS


def flat_name(rel: Path) -> str:
    """ "sub/dir/cat 1.jpeg" -> "sub__dir__cat 1.jpeg": nested folders flattened into a unique,
    readable name (the holdout layout flattens the same way)."""
    return rel.as_posix().replace("/", "__")


def _write_png(path: Path, pixels: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise UserError(f"could not encode {path} as PNG")
    path.write_bytes(data.tobytes())  # a full disk raises OSError with the path, not a False


def pixel_rows_to_pngs(frame: pd.DataFrame, pixel_cols: list[str], paths: list[Path], desc: str) -> None:
    side = int(round(len(pixel_cols) ** 0.5))
    if side * side != len(pixel_cols):
        raise UserError(f"{desc}: {len(pixel_cols)} pixel columns do not make a square image")
    pixels = frame[pixel_cols].to_numpy()
    if pixels.min() < 0 or pixels.max() > 255:
        raise UserError(f"{desc}: pixel values must lie in 0..255")
    pixels = pixels.astype(np.uint8).reshape(len(frame), side, side)
    for path, img in track(list(zip(paths, pixels, strict=True)), desc):
        _write_png(path, img)


def _class_dirs(out: Path, classes: set[str], where: str) -> None:
    for cls in sorted(classes):
        inside(out / "train", out / "train" / check_class_name(cls, where)).mkdir(parents=True)


def layout_csv_pixels(comp: Competition, raw: Path, out: Path) -> None:
    """Pixels in CSV rows (digit-recognizer): one row per image, `label` then pixel0..pixelN."""
    opts = comp.layout_options
    train_path, test_path = inside(raw, raw / opts.train_csv), inside(raw, raw / opts.test_csv)
    train, test = read_csv(train_path, "train CSV"), read_csv(test_path, "test CSV")
    if opts.label_column not in train.columns:
        raise UserError(f"{train_path}: no '{opts.label_column}' column (layout.label_column)")
    pixel_cols = [c for c in train.columns if c != opts.label_column]
    labels = train[opts.label_column].astype(str)
    _class_dirs(out, set(labels), f"{train_path}: column {opts.label_column}")
    (out / "test").mkdir(parents=True)
    paths = [out / "train" / lab / f"{i}.png" for i, lab in enumerate(labels)]
    pixel_rows_to_pngs(train, pixel_cols, paths, "train images")
    if list(test.columns) != pixel_cols:
        raise UserError(f"{test_path}: columns differ from the train CSV's pixel columns")
    paths = [out / "test" / f"{i + opts.id_start}.png" for i in range(len(test))]
    pixel_rows_to_pngs(test, pixel_cols, paths, "test images")
    copy_csvs(comp, raw, out)


def copy_csvs(comp: Competition, raw: Path, out: Path) -> None:
    """sample_submission.csv (required) and solution.csv (where the source knows the test labels)."""
    sample = inside(raw, raw / comp.layout_options.sample_submission)
    if not sample.exists():
        raise UserError(f"{sample} is missing: every competition needs a sample submission")
    shutil.copyfile(sample, out / "sample_submission.csv")
    if (raw / "solution.csv").exists():
        shutil.copyfile(raw / "solution.csv", out / "solution.csv")


def image_dir(raw: Path, folder_name: str, key: str) -> tuple[Path, list[Path]]:
    """raw/<folder_name>/ (layout.<key>) and every image under it, sorted."""
    folder = inside(raw, raw / folder_name)
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in raw.iterdir())[:10]) if raw.is_dir() else "nothing"
        raise UserError(f"{folder} is missing (layout.{key}); {raw}/ holds: {found}")
    return folder, sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _place_all(pairs: list[tuple[Path, Path]], desc: str) -> list[Path]:
    """Link (or copy) each source to its target in a fresh folder. A target name already taken
    (a/x.png flattened meets a file really called a__x.png) gets ~2, ~3, ...: every image is kept,
    and nothing is ever written through an existing link into raw/. Returns where each one went."""
    placed = []
    for src, wanted in track(pairs, desc):
        dst, n = wanted, 1
        while dst.exists():
            n += 1
            dst = wanted.with_name(f"{wanted.stem}~{n}{wanted.suffix}")
        link_or_copy(src, dst)
        placed.append(dst)
    return placed


def scored_test_images(comp: Competition, sample_path: Path, images: list[Path]) -> list[Path]:
    """Of `images`, those the sample submission lists (by stem or name, as submission.id_is says):
    the test set where one folder holds the train and the test images (plant-pathology-2020's
    images/Train_0.jpg and images/Test_0.jpg)."""
    sample = read_csv(sample_path, "sample submission")
    id_column = comp.submission.id_column
    if id_column not in sample.columns:
        raise UserError(f"{sample_path}: no '{id_column}' column (submission.id_column)")
    ids = set(sample[id_column].astype(str))
    return [p for p in images if (p.stem if comp.submission.id_is == "stem" else p.name) in ids]


def write_split(
    comp: Competition,
    raw: Path,
    out: Path,
    pairs: list[tuple[Path, Path, str]],
    groups: list[str] | None = None,
) -> None:
    """train/<class>/ from (image, its path inside the train folder, class) triples, test/ from
    layout.test_dir, then the CSVs; nested images keep their sub-path in their name. `groups` (one
    per pair: the images that must share a fold) go to groups.csv. Where layout.test_dir is the
    train folder itself, test/ takes the images the sample submission lists."""
    opts = comp.layout_options
    _class_dirs(out, {c for _, _, c in pairs}, f"{comp.path}: {opts.kind}")
    train = [(src, inside(out / "train", out / "train" / cls / flat_name(rel))) for src, rel, cls in pairs]
    placed = _place_all(train, "train images")
    if groups is not None:
        rows = {"image": [p.relative_to(out).as_posix() for p in placed], "group": groups}
        pd.DataFrame(rows).to_csv(out / GROUPS, index=False)
    test_dir, tests = image_dir(raw, opts.test_dir, "test_dir")
    if test_dir.resolve() == inside(raw, raw / opts.train_dir).resolve():
        tests = scored_test_images(comp, inside(raw, raw / opts.sample_submission), tests)
    (out / "test").mkdir()
    _place_all([(src, out / "test" / flat_name(src.relative_to(test_dir))) for src in tests], "test images")
    copy_csvs(comp, raw, out)


def layout_label_in_name(comp: Competition, raw: Path, out: Path) -> None:
    """Class in the file name (dogs-vs-cats: train/cat.0.jpg): layout.pattern's first group."""
    opts = comp.layout_options
    folder, images = image_dir(raw, opts.train_dir, "train_dir")
    pattern = re.compile(opts.pattern)
    matches = [(p, pattern.match(p.name)) for p in images]
    bad = [p.name for p, m in matches if not m]
    if bad:
        raise UserError(
            f"{len(bad)} of {len(images)} files in {folder} do not match layout.pattern "
            f"{pattern.pattern!r} (e.g. {bad[0]})"
        )
    write_split(comp, raw, out, [(p, p.relative_to(folder), m.group(1)) for p, m in matches])


def _find_by_id(images: list[Path], folder: Path, ext: str) -> Callable[[str], Path | None]:
    """id -> image: by its path inside the folder, else by bare name or stem, each with or without
    layout.image_ext; a bare name that two sub-folders share is ambiguous and matches nothing."""
    exact: dict[str, Path] = {}
    bare: dict[str, Path | None] = {}
    for p in images:
        rel = p.relative_to(folder)
        exact[rel.as_posix()] = exact[rel.with_suffix("").as_posix()] = p
        for key in (p.name, p.stem):
            bare[key] = p if bare.get(key, p) == p else None

    def find(image_id: str) -> Path | None:
        keys = (image_id, image_id + ext)
        return next((exact[k] for k in keys if k in exact), None) or next(
            (bare[k] for k in keys if bare.get(k)), None
        )

    return find


def layout_csv_labels(comp: Competition, raw: Path, out: Path) -> None:
    """Class in a CSV beside the images (dog-breed labels.csv id,breed; or one-hot columns,
    plant-pathology-2020): the id is the image's name or stem (layout.image_ext completes ids
    without one). With task.group_column, the CSV's column of groups (patient ids) too."""
    opts = comp.layout_options
    csv_path = inside(raw, raw / opts.labels_csv)
    labels = read_csv(csv_path, "labels CSV")
    if opts.id_column not in labels.columns:
        raise UserError(
            f"{csv_path}: no '{opts.id_column}' column (columns: {', '.join(labels.columns[:10])})"
        )
    ids = labels[opts.id_column].astype(str)
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise UserError(
            f"{csv_path}: id {repeated.iloc[0]!r} appears {int((ids == repeated.iloc[0]).sum())} times "
            f"({len(repeated)} repeated rows); each image needs exactly one label"
        )
    classes = _csv_classes(labels, ids, opts, csv_path)
    groups = _csv_groups(labels, comp.task.group_column, csv_path)
    folder, images = image_dir(raw, opts.train_dir, "train_dir")
    find = _find_by_id(images, folder, opts.image_ext)
    pairs, kept, missing = [], [], []
    for n, (image_id, label) in enumerate(zip(ids, classes, strict=True)):
        src = find(image_id)
        if src is None:
            missing.append(image_id)
        else:
            pairs.append(
                (src, src.relative_to(folder), check_class_name(label, f"{csv_path}: id {image_id}"))
            )
            kept.append(n)
    if missing:
        raise UserError(
            f"{len(missing)} ids of {csv_path.name} have no image in {folder} (e.g. {missing[0]})"
        )
    write_split(comp, raw, out, pairs, None if groups is None else [groups[n] for n in kept])


def _csv_classes(labels: pd.DataFrame, ids: pd.Series, opts: CsvLabelsLayout, csv_path: Path) -> list[str]:
    """Each row's class: layout.label_column's value, or the name of the one layout.label_columns
    column that holds 1 (a row with no 1 or several is a multi-label row: not trained yet)."""
    columns = opts.label_columns or [opts.label_column]
    absent = [c for c in columns if c not in labels.columns]
    if absent:
        key = "label_columns" if opts.label_columns else "label_column"
        raise UserError(
            f"{csv_path}: no '{absent[0]}' column (layout.{key}; columns: {', '.join(labels.columns[:10])})"
        )
    if not opts.label_columns:
        return labels[opts.label_column].astype(str).tolist()
    values = labels[columns].apply(pd.to_numeric, errors="coerce")
    not_binary = ~values.isin([0, 1])
    if not_binary.any().any():
        row = int(not_binary.any(axis=1).to_numpy().argmax())
        col = columns[int(not_binary.iloc[row].to_numpy().argmax())]
        raise UserError(
            f"{csv_path}: line {row + 2} (id {ids.iloc[row]}): {col} is {labels[col].iloc[row]}; "
            f"layout.label_columns hold 0 or 1 (one-hot)"
        )
    ones = values.sum(axis=1).astype(int).to_numpy()
    wrong = np.flatnonzero(ones != 1)
    if len(wrong):
        row = int(wrong[0])
        has = "no 1" if ones[row] == 0 else f"{ones[row]} 1s"
        raise UserError(
            f"{csv_path}: line {row + 2} (id {ids.iloc[row]}) has {has} among {', '.join(columns)} "
            f"({len(wrong)} such rows): this looks like a multi-label task (no or several classes per "
            "image), which kagglecv does not train yet; single-label needs exactly one 1 per row"
        )
    return [columns[j] for j in values.to_numpy().argmax(axis=1)]


def _csv_groups(labels: pd.DataFrame, column: str | None, csv_path: Path) -> list[str] | None:
    """task.group_column's value per row (a patient id): the images of one group share a fold."""
    if not column:
        return None
    if column not in labels.columns:
        raise UserError(
            f"{csv_path}: no '{column}' column (task.group_column; columns: {', '.join(labels.columns[:10])})"
        )
    values = labels[column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise UserError(
            f"{csv_path}: column {column} (task.group_column) is empty on line {int(empty.to_numpy().argmax()) + 2} "
            f"({int(empty.sum())} empty rows); every image needs its group"
        )
    return values.astype(str).tolist()


def layout_class_folders(comp: Competition, raw: Path, out: Path) -> None:
    """One folder per class already (plant-seedlings: train/<Species>/*.png)."""
    folder, images = image_dir(raw, comp.layout_options.train_dir, "train_dir")
    rels = [p.relative_to(folder) for p in images]
    if any(len(rel.parts) < 2 for rel in rels):
        raise UserError(
            f"{folder} has images outside class folders (layout class_folders wants {folder}/<class>/)"
        )
    write_split(
        comp,
        raw,
        out,
        [(p, rel.relative_to(rel.parts[0]), rel.parts[0]) for p, rel in zip(images, rels, strict=True)],
    )
