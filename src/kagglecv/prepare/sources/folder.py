"""Source `folder`: a folder you already have, one subfolder per class (nested folders inside a class
are fine), e.g.

    make data COMP=my-pets SRC=~/Pictures/pets      # pets/cat/**, pets/dog/** -> data/my-pets/

writes competitions/my-pets.yaml the first time (see `write_competition`). Every file is checked
the same way scraped images are: jpg/png/webp/bmp/tif in any mode (CMYK, RGBA, palette, 16-bit,
EXIF-rotated) are kept; corrupt, truncated, too small and non-image files and broken links are
skipped and listed;
exact and near duplicates (within and across classes) are dropped, first one wins. raw/ receives
copies of the kept files (your folder is only read) and manifest.csv, one row per file; the room
they need is checked before the first copy. The keys of `source:` are FolderSource's fields.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from rich.markup import escape
from rich.table import Table

from kagglecv.core.competition import COMPETITIONS_DIR, Competition, build_options, check_class_name, inside
from kagglecv.core.console import console, progress
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write, human_bytes
from kagglecv.core.images import IMAGE_EXTS, Deduper, ImageCheck, check_image
from kagglecv.core.names import check_name

MANIFEST_COLUMNS = ["url", "file", "class", "sha256", "phash", "status", "detail"]
SHOW_SKIPPED = 15  # skipped files listed by name; the rest are in raw/manifest.csv


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _listed(path: Path) -> bool:
    """A file to check and report: a regular file, or a link to one that is gone (reported)."""
    return path.is_file() or _broken_link(path)


def scan(src: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """class -> its files (sorted, nested folders included), plus the stray files outside classes."""
    if not src.is_dir():
        raise UserError(f"image folder {src} does not exist or is not a folder (SRC=path/to/folder)")
    classes = {
        d.name: sorted(p for p in d.rglob("*") if _listed(p) and _visible(p, src))
        for d in sorted(src.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    strays = sorted(p for p in src.iterdir() if _listed(p) and not p.name.startswith("."))
    with_images = [
        c
        for c, files in classes.items()
        if any(p.suffix.lower() in IMAGE_EXTS and p.is_file() for p in files)
    ]
    if len(with_images) < 2:
        raise UserError(
            f"{src} needs one subfolder per class with images in each (found {len(with_images)} such "
            f"subfolder(s){': ' + ', '.join(with_images) if with_images else ''}), e.g. {src}/cat/*.jpg, {src}/dog/*.jpg"
        )
    return classes, strays


def _check(path: Path, min_size: int) -> ImageCheck:
    if _broken_link(path):
        return ImageCheck("broken_link", f"links to {os.readlink(path)}, which does not exist")
    if path.suffix.lower() not in IMAGE_EXTS:
        return ImageCheck(
            "not_an_image", f"extension {path.suffix or '(none)'} is not {'/'.join(sorted(IMAGE_EXTS))}"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        return ImageCheck("unreadable", str(e)[:100])
    return check_image(data, min_size)


@dataclass
class FolderSource:
    """source: keys of a folder competition (write_competition writes them with comments)."""

    kind: str = "folder"
    path: str = ""  # the image folder: one subfolder per class
    min_size: int = 32  # shorter side in pixels; smaller images are skipped
    near_distance: int = 4  # perceptual-hash bits: closer images are near duplicates (-1 keeps them)
    workers: int = 4  # files checked at once

    def __post_init__(self) -> None:
        if not self.path:
            raise UserError("source.path must name the image folder (one subfolder per class)")
        if self.min_size < 1 or self.workers < 1 or self.near_distance < -1:
            raise UserError("source.min_size and workers must be at least 1, near_distance -1 or more")


def _options_and_folder(comp: Competition) -> tuple[FolderSource, Path]:
    """The checked options and the image folder, which must be there."""
    opts = build_options(FolderSource, comp.source, comp.path, "source")
    src = Path(opts.path).expanduser()
    if not src.exists():
        raise UserError(
            f"{comp.path}: source.path {src} does not exist (moved or renamed?): point source.path at "
            "the image folder, or put the folder back"
        )
    return opts, src


def check(comp: Competition) -> None:
    """Everything but reading the images: keys, and a folder that is there with class folders."""
    scan(_options_and_folder(comp)[1])


def fetch(comp: Competition, raw_dir: Path) -> None:
    opts, src = _options_and_folder(comp)
    classes, strays = scan(src)
    for cls in classes:
        check_class_name(cls, f"{src}/")
    files = [(cls, p) for cls, paths in classes.items() for p in paths]
    with progress() as bar, ThreadPoolExecutor(max_workers=opts.workers) as pool:
        task = bar.add_task(f"checking {len(files)} files", total=len(files), info="")
        checks = []
        for chk in pool.map(lambda item: _check(item[1], opts.min_size), files):
            checks.append(chk)
            bar.advance(task)

    deduper = Deduper(opts.near_distance)
    rows = [
        {"url": str(p), "class": "", "status": "broken_link", "detail": _check(p, opts.min_size).detail}
        if _broken_link(p)
        else {"url": str(p), "class": "", "status": "outside_classes", "detail": "not inside a class folder"}
        for p in strays
    ]
    copies: list[tuple[Path, str]] = []
    for (cls, path), chk in zip(files, checks, strict=True):
        row = {"url": str(path), "file": "", "class": cls, "sha256": chk.sha256, "phash": chk.phash}
        row.update(status=chk.status, detail=chk.detail)
        if chk.ok:
            status, of = deduper.check(chk.sha256, chk.phash)
            if status == "kept":
                rel = f"{cls}/{path.relative_to(src / cls).as_posix()}"
                deduper.add(chk.sha256, chk.phash, rel)
                copies.append((path, rel))
                row["file"] = rel
            else:
                row.update(status=status, detail=f"of {of}")
        rows.append(row)
    _copy_kept(copies, src, raw_dir)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).fillna("")
    manifest.to_csv(raw_dir / "manifest.csv", index=False)
    report(manifest, src)


def _copy_kept(copies: list[tuple[Path, str]], src: Path, raw_dir: Path) -> None:
    """Copy the kept files into raw/ (your folder is only read), after checking there is room; a
    disk that fills up anyway is one line with what it needs (the caller removes the partial raw/)."""
    sizes = [path.stat().st_size for path, _ in copies]
    raw_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(raw_dir).free
    need = sum(sizes) + 256 * len(sizes) + 65536  # the files, their manifest rows, some slack
    if need > free:
        raise _no_room(src, raw_dir, need, free)
    done = 0
    try:
        for (path, rel), size in zip(copies, sizes, strict=True):
            target = inside(raw_dir, raw_dir / rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            done += size
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _no_room(src, raw_dir, need, shutil.disk_usage(raw_dir).free + done) from None


def _no_room(src: Path, raw_dir: Path, need: int, free: int) -> UserError:
    return UserError(
        f"importing {src}/ into {raw_dir.parent}/ needs {human_bytes(need)} but that disk has "
        f"{human_bytes(free)} free: free some space (or move data/ to a bigger disk) and rerun"
    )


def report(manifest: pd.DataFrame, src: Path) -> None:
    """A per-class table (files, kept, skipped by reason), then the skipped files by name."""
    table = Table(title=f"folder {escape(str(src))}: images per class (every file in raw/manifest.csv)")
    in_class = manifest[manifest["class"] != ""]
    classes = sorted(set(in_class["class"]))
    table.add_column("")
    for cls in [*classes, "total"]:
        table.add_column(escape(cls), justify="right")
    counts = {cls: Counter(in_class[in_class["class"] == cls]["status"]) for cls in classes}

    def row(name: str, values: list[int], style: str = "") -> None:
        cells = [str(v) if v else "" for v in [*values, sum(values)]]
        table.add_row(name, *(f"[{style}]{c}[/]" if style and c else c for c in cells))

    row("files", [sum(counts[c].values()) for c in classes])
    row("kept", [counts[c].get("kept", 0) for c in classes], "bold green")
    for reason in sorted(set(in_class["status"]) - {"kept"}):
        row(f"skipped: {reason}", [counts[c].get(reason, 0) for c in classes], "yellow")
    console.print(table)
    skipped = manifest[manifest["status"] != "kept"]
    for _, row in skipped.head(SHOW_SKIPPED).iterrows():
        name = Path(row["url"]).relative_to(src).as_posix() if row["url"].startswith(str(src)) else row["url"]
        console.print(
            f"  [yellow]skipped[/] {escape(name)}: {row['status']} {escape(row['detail'])}".rstrip(),
            soft_wrap=True,
        )
    if len(skipped) > SHOW_SKIPPED:
        console.print(f"  ... and {len(skipped) - SHOW_SKIPPED} more skipped (raw/manifest.csv)")


def write_competition(slug: str, src: Path, root: Path | None = None) -> Path:
    """competitions/<slug>.yaml for a folder of class folders, so `make data COMP=<slug> SRC=...`
    needs no YAML written by hand; an existing file is kept when it points at the same folder."""
    root = root or COMPETITIONS_DIR
    path = root / f"{check_name(slug, 'COMP (the competition name for your folder)')}.yaml"
    src = src.expanduser().resolve()
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
        source = data.get("source") or {}
        if source.get("kind") != "folder":
            raise UserError(f"{path} exists and is not a folder competition; pick another COMP= for {src}")
        if Path(str(source.get("path", ""))).expanduser().resolve() != src:
            raise UserError(
                f"{path} already reads images from {source.get('path')}; edit its source.path or pick another COMP="
            )
        return path
    scan(src)  # fail before writing anything if the folder is not class folders
    text = f"""# Written by `kagglecv data {slug} --src {src}`: your own image folder, one subfolder per class.
# Edit freely; `make data COMP={slug} FORCE=1` re-reads the folder.
slug: {slug}
title: {json.dumps(f"{slug}: own images from {src.name}/")}
source:
  kind: folder
  path: {json.dumps(str(src))}
  min_size: 32          # shorter side in pixels; smaller images are skipped
  near_distance: 4      # perceptual-hash bits: closer images are near duplicates (dropped); -1 keeps them
layout:
  kind: holdout
  holdout: 0.05         # stratified share held out as a labelled test set (scored by `make submit`)
  group_distance: 6     # near-duplicate groups stay on one side of the holdout and within one fold
  seed: 0
submission:
  id_column: id
  label_columns: [label]
  kind: class_name
  upload: false         # a local holdout: scored here, never sent to Kaggle
metric: accuracy
n_folds: 5
hflip: true             # set false if a mirrored image could change its class
vflip: false
"""
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(text))
    console.print(
        f"[green]✓[/] wrote {escape(str(path))} (source: folder {escape(str(src))}); "
        "edit it to change the holdout or folds"
    )
    return path
