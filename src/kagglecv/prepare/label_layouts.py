"""The layout kinds for Kaggle-shaped files: each is a function `(comp, raw, out)` that writes
out/train/<class>/, out/test/ and the CSVs from raw/ (layout.py runs it in a staging folder).

    csv_pixels     train.csv rows of label,pixel0..pixelN -> PNGs (digit-recognizer)
    label_in_name  train/cat.0.jpg: the class from the file name (dogs-vs-cats)
    csv_labels     train/<id>.jpg + labels.csv id,label (dog-breed-identification)
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

from kagglecv.core.competition import Competition, check_class_name, inside
from kagglecv.core.console import track
from kagglecv.core.errors import UserError
from kagglecv.core.files import link_or_copy
from kagglecv.core.images import IMAGE_EXTS
from kagglecv.core.tables import read_csv


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


def _place_all(pairs: list[tuple[Path, Path]], desc: str) -> None:
    """Link (or copy) each source to its target in a fresh folder. A target name already taken
    (a/x.png flattened meets a file really called a__x.png) gets ~2, ~3, ...: every image is kept,
    and nothing is ever written through an existing link into raw/."""
    for src, wanted in track(pairs, desc):
        dst, n = wanted, 1
        while dst.exists():
            n += 1
            dst = wanted.with_name(f"{wanted.stem}~{n}{wanted.suffix}")
        link_or_copy(src, dst)


def write_split(comp: Competition, raw: Path, out: Path, pairs: list[tuple[Path, Path, str]]) -> None:
    """train/<class>/ from (image, its path inside the train folder, class) triples, test/ from
    layout.test_dir, then the CSVs; nested images keep their sub-path in their name."""
    _class_dirs(out, {c for _, _, c in pairs}, f"{comp.path}: {comp.layout_options.kind}")
    train = [(src, inside(out / "train", out / "train" / cls / flat_name(rel))) for src, rel, cls in pairs]
    _place_all(train, "train images")
    test_dir, tests = image_dir(raw, comp.layout_options.test_dir, "test_dir")
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
    """Class in a CSV beside the images (dog-breed labels.csv id,breed): the id is the image's
    name or stem (layout.image_ext completes ids without one)."""
    opts = comp.layout_options
    csv_path = inside(raw, raw / opts.labels_csv)
    labels = read_csv(csv_path, "labels CSV")
    for col in (opts.id_column, opts.label_column):
        if col not in labels.columns:
            raise UserError(f"{csv_path}: no '{col}' column (columns: {', '.join(labels.columns[:10])})")
    ids = labels[opts.id_column].astype(str)
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise UserError(
            f"{csv_path}: id {repeated.iloc[0]!r} appears {int((ids == repeated.iloc[0]).sum())} times "
            f"({len(repeated)} repeated rows); each image needs exactly one label"
        )
    folder, images = image_dir(raw, opts.train_dir, "train_dir")
    find = _find_by_id(images, folder, opts.image_ext)
    pairs, missing = [], []
    for image_id, label in zip(ids, labels[opts.label_column].astype(str), strict=True):
        src = find(image_id)
        if src is None:
            missing.append(image_id)
        else:
            pairs.append(
                (src, src.relative_to(folder), check_class_name(label, f"{csv_path}: id {image_id}"))
            )
    if missing:
        raise UserError(
            f"{len(missing)} ids of {csv_path.name} have no image in {folder} (e.g. {missing[0]})"
        )
    write_split(comp, raw, out, pairs)


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
