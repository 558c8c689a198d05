"""Raw files -> the prepared shape every later stage reads, plus a fixed stratified k-fold split.

    data/<comp>/raw/                 files as obtained, never modified
    data/<comp>/train/<class>/<img>  labelled images, one folder per class
    data/<comp>/test/<img>           images to predict
    data/<comp>/sample_submission.csv
    data/<comp>/solution.csv         test labels (id column + `label`), only where known locally
    data/<comp>/folds.csv            image, label, fold (and group, where images must share a fold)
    data/<comp>/prepared.json        written last, atomically: its presence means the shape is complete

`prepare` owns data/<comp>/: it holds the folder's exclusive lock, fetches raw/ once (into
raw.partial/, renamed when complete), runs the layout kind (label_layouts.py, holdout.py) in
.staging/ and swaps the result in only when it is complete. Any half-written state a crash, a full
disk or a kill leaves (raw.partial/, .staging/, a raw/ missing files its manifest lists, no or a
damaged prepared.json) is found and redone by the next plain `make data`. `read_folds` is the one
reader of folds.csv, and checks it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
from rich.markup import escape

from kagglecv.core.competition import Competition, remember_last
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write, disk_error, human_bytes
from kagglecv.core.images import IMAGE_EXTS
from kagglecv.core.locks import data_lock
from kagglecv.prepare import sources
from kagglecv.prepare.folds import (
    FOLDS,
    GROUPS,
    describe_groups,
    list_train_images,
    make_folds,
    too_few_for_folds,
)
from kagglecv.prepare.folds import read_folds as read_folds  # the stages import it from here
from kagglecv.prepare.holdout import layout_holdout
from kagglecv.prepare.label_layouts import (
    layout_class_folders,
    layout_csv_labels,
    layout_csv_pixels,
    layout_label_in_name,
)
from kagglecv.prepare.prepared import PREPARED, PreparedInfo

PARTIAL, OLD_RAW, STAGING = "raw.partial", "raw.old", ".staging"  # never complete: removed on sight

LAYOUTS: dict[str, Callable[[Competition, Path, Path], None]] = {
    "csv_pixels": layout_csv_pixels,
    "label_in_name": layout_label_in_name,
    "csv_labels": layout_csv_labels,
    "class_folders": layout_class_folders,
    "holdout": layout_holdout,  # own classes (scrape/folder sources): train/ + a labelled holdout
}


# --- what is there: prepared.json, raw/, leftovers ------------------------------------------------


def _prepared_info(comp: Competition) -> PreparedInfo | None:
    """prepared.json's record, or None when it is missing or damaged (then nothing is prepared)."""
    try:
        return PreparedInfo.from_json(json.loads((comp.data_dir / PREPARED).read_text()))
    except (OSError, ValueError):
        return None


def is_prepared(comp: Competition) -> bool:
    return _prepared_info(comp) is not None


def _write_marker(path: Path, info: PreparedInfo) -> None:
    """prepared.json atomically and on disk (file and folder fsync'd): after a crash or a power cut
    it is either absent or complete, never empty or half-written."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(json.dumps(info.to_json(), indent=2))
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raw_problem(raw: Path) -> str | None:
    """Why raw/ cannot be trusted as complete (empty, or files its manifest lists are gone: a run
    killed at the wrong moment, or files deleted by hand), else None."""
    if not raw.is_dir():
        return None
    if not any(raw.iterdir()):
        return "it is empty"
    manifest = raw / "manifest.csv"
    if not manifest.exists():
        return None
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return "its manifest.csv is unreadable"
    if not {"file", "status"} <= set(df.columns):
        return None
    missing = [f for f in df.loc[df["status"] == "kept", "file"] if not (raw / f).is_file()]
    if missing:
        return f"{len(missing)} files its manifest.csv lists are missing, e.g. {missing[0]}"
    return None


def _clear_leftovers(root: Path) -> None:
    """What an interrupted run left (the lock is held, so nobody is writing it): a partial fetch or
    layout is removed; a complete old raw/ caught between two renames is put back."""
    if (root / OLD_RAW).is_dir() and not (root / "raw").exists():
        (root / OLD_RAW).rename(root / "raw")
    for name in (PARTIAL, OLD_RAW, STAGING):
        shutil.rmtree(root / name, ignore_errors=True)
    for tmp in root.glob(f"{PREPARED}.*.tmp.json"):
        tmp.unlink(missing_ok=True)


_HELD: set[Path] = set()  # data folders this process holds the lock of (fetch_raw inside prepare)


@contextlib.contextmanager
def _writing(comp: Competition) -> Iterator[None]:
    """data/<comp>/ to this process alone while `make data` writes it (re-entrant in one process)."""
    key = comp.data_dir.absolute()
    if key in _HELD:
        yield
        return
    with data_lock(comp.data_dir, exclusive=True, what=f"make data COMP={comp.slug}"):
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)


# --- fetching raw/ ----------------------------------------------------------------------------------


def fetch_raw(comp: Competition, force: bool = False) -> Path:
    """data/<comp>/raw/ as the source delivers it, fetched once (`force` fetches again). An old raw/
    (and the preparation made from it) is replaced only once the new fetch is complete."""
    raw = comp.data_dir / "raw"
    with _writing(comp):
        if raw.exists() and not force:
            return raw
        partial, old = comp.data_dir / PARTIAL, comp.data_dir / OLD_RAW
        shutil.rmtree(partial, ignore_errors=True)
        comp.data_dir.mkdir(parents=True, exist_ok=True)
        console.print(f"fetching {escape(comp.slug)} ({comp.source_kind}) into {escape(str(raw))}/")
        try:
            sources.fetch(comp, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # a partial fetch is never left behind
            if comp.data_dir.is_dir() and not any(comp.data_dir.iterdir()):
                comp.data_dir.rmdir()  # a fetch that brought nothing leaves no empty folder behind
            raise
        (comp.data_dir / PREPARED).unlink(missing_ok=True)  # made from the raw/ about to go
        if raw.exists():
            raw.rename(old)  # two renames, never a half-deleted raw/: see _clear_leftovers
        partial.rename(raw)  # raw/ exists only once everything arrived
        shutil.rmtree(old, ignore_errors=True)
    return raw


def check_before_fetch(comp: Competition, fetching: bool) -> None:
    """Every mistake findable without downloading, found before anything is fetched or removed: the
    layout's kind and options, and (when the source will be read) the source's own checks."""
    comp.layout_options  # noqa: B018 (builds and checks the options)
    if fetching:
        sources.check(comp)


def prepare(comp: Competition, force: bool = False, seed: int = 42) -> Path:
    """Fetch raw files (once) and lay them out in the prepared shape. Idempotent; `force` redoes it.

    One `make data` per competition at a time (data/<comp>/ is locked). Nothing is removed before
    the competition file and the source have been checked, and raw/ is replaced only by a complete
    new fetch, so a failure leaves either the previous preparation or a complete raw/ that a plain
    rerun lays out again without fetching. A full or read-only disk is one line, partial files
    removed."""
    try:
        with _writing(comp):
            return _prepare(comp, force, seed)
    except OSError as e:
        line = disk_error(e)
        if line is None:
            raise
        raise UserError(f"make data {comp.slug}: {line}") from None


def _prepare(comp: Competition, force: bool, seed: int) -> Path:
    root, raw = comp.data_dir, comp.data_dir / "raw"
    _clear_leftovers(root)
    whole = (root / FOLDS).is_file() and (root / "train").is_dir() and (root / "test").is_dir()
    info = _prepared_info(comp) if whole else None  # a part deleted by hand: laid out again
    if info is not None and not force:
        why = _split_again(comp, info)
        if why is None:
            console.print(
                f"[green]✓[/] {escape(comp.slug)} already prepared in {escape(str(root))}/ "
                "(FORCE=1 / --force redoes it)"
            )
            remember_last(comp.slug)
            return root
        console.print(f"{escape(why)}: splitting {escape(comp.slug)} again")
    problem = None if force else _raw_problem(raw)
    if problem:
        console.print(f"[yellow]{escape(str(raw))}/ is incomplete ({escape(problem)}): fetching it again[/]")
    fetching = force or problem is not None or not raw.exists()
    check_before_fetch(comp, fetching)
    try:
        raw = fetch_raw(comp, fetching)
    except UserError as e:
        if force and info is not None:  # the fetch failed before touching the old raw/ or preparation
            raise UserError(
                f"{e}\n(FORCE changed nothing: {root}/ still holds the previous preparation)"
            ) from None
        raise
    info = _lay_out_or_clean_up(comp, raw, seed, force)
    _write_marker(root / PREPARED, info)
    remember_last(comp.slug)
    console.print(
        f"[green]✓[/] prepared {escape(comp.slug)}: {info.n_train} train images in "
        f"{len(info.classes)} classes, {info.n_test} test images, {comp.n_folds} folds "
        f"-> {escape(str(root))}/"
    )
    return root


def _split_again(comp: Competition, info: PreparedInfo) -> str | None:
    """Why the folds of a prepared competition no longer fit its YAML (n_folds changed, or a
    task.group_column that folds.csv does not record yet), else None."""
    if info.n_folds != comp.n_folds:
        return f"n_folds is now {comp.n_folds} (was {info.n_folds})"
    if comp.task.group_column:
        try:
            columns = pd.read_csv(comp.data_dir / FOLDS, nrows=0).columns
        except (OSError, ValueError):
            return None  # read_folds says what is wrong with it
        if "group" not in columns:
            return f"task.group_column: {comp.task.group_column} is new"
    return None


def _lay_out_or_clean_up(comp: Competition, raw: Path, seed: int, force: bool) -> PreparedInfo:
    """_lay_out, with .staging/ removed whatever stops it, and a full disk or a failure after FORCE
    told as what to do next."""
    staging = comp.data_dir / STAGING
    try:
        return _lay_out(comp, raw, staging, seed)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_room(comp, raw, e) from None
        if isinstance(e, UserError) and force:
            raise UserError(
                f"{e}\nThe raw data in {raw}/ is intact: after a fix to {comp.path}, `make data "
                f"COMP={comp.slug}` (without FORCE) lays it out again, with no new fetch"
            ) from None
        raise


def _no_room(comp: Competition, raw: Path, e: OSError) -> UserError:
    """A full disk while laying out: where, how much it needs at most (raw/'s size, when images
    cannot be hard-linked), how much is free, and that raw/ is kept."""
    need = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file())
    free = shutil.disk_usage(comp.data_dir).free
    return UserError(
        f"laying out {comp.data_dir}/ stopped: the disk is full (writing {e.filename or comp.data_dir}); "
        f"it needs up to {human_bytes(need)} (the size of raw/) and {comp.data_dir}/ has "
        f"{human_bytes(free)} free: free some space and rerun `make data COMP={comp.slug}` "
        "(raw/ is kept: nothing is fetched again)"
    )


def _check_submission_classes(comp: Competition, labels: pd.Series) -> None:
    """Where the competition file lists the classes its submission may hold (submission.classes,
    e.g. the codes of cassava's label map), every training label must be one: a model that learned
    another class would write it into the submission, or (class_index) find no index for it."""
    known = [str(c) for c in comp.submission.classes or []]
    extra = sorted(set(labels.astype(str)) - set(known)) if known else []
    if extra:
        raise UserError(
            f"{comp.slug}: training labels {extra[:5]} are not among submission.classes {known[:10]} "
            f"of {comp.path}; fix those labels in the data, or list the class there if Kaggle takes it"
        )


def _lay_out(comp: Competition, raw: Path, staging: Path, seed: int) -> PreparedInfo:
    """raw/ -> the prepared shape in `staging`, swapped into data/<comp>/ once complete; returns
    what prepared.json records."""
    root = comp.data_dir
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    LAYOUTS[comp.layout["kind"]](comp, raw, staging)
    from kagglecv.prepare.verify import IMAGES, verify_images  # the one decode: drops what will not decode

    unreadable = verify_images(staging)
    images = list_train_images(staging / "train")
    if images.empty:
        raise UserError(f"{comp.slug}: the layout found no labelled training images in {raw}/")
    _check_submission_classes(comp, images["label"])
    counts = images["label"].value_counts()
    if counts.min() < comp.n_folds:
        held = None
        if comp.layout["kind"] == "holdout":
            held = pd.read_csv(staging / "solution.csv", dtype=str)["label"].value_counts()
        raise too_few_for_folds(comp, counts, held)
    groups = None
    # images that must share a fold: near duplicates (layout holdout), task.group_column (csv_labels)
    if (staging / GROUPS).exists():
        known = pd.read_csv(staging / GROUPS, dtype=str, keep_default_na=False)
        groups = images["image"].map(known.set_index("image")["group"]).fillna(images["image"])
    group_name = comp.task.group_column or "near-duplicate"
    folds = make_folds(images, comp.n_folds, seed, groups, group_name)
    if comp.task.group_column:
        console.print(f"folds: {escape(describe_groups(folds, group_name))}")
    (root / PREPARED).unlink(missing_ok=True)  # from here on, the folder is not complete
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
    return PreparedInfo(
        competition=comp.slug,
        classes=sorted(str(c) for c in counts.index),
        train_counts={str(k): int(v) for k, v in counts.items()},
        n_train=int(len(folds)),
        n_test=sum(1 for p in (root / "test").iterdir() if p.suffix.lower() in IMAGE_EXTS),
        n_folds=comp.n_folds,
        fold_seed=seed,
        has_solution=(root / "solution.csv").exists(),
        prepared_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        unreadable_train=unreadable["unreadable_train"],
        unreadable_test=unreadable["unreadable_test"],
    )


def read_prepared(comp: Competition) -> PreparedInfo:
    """prepared.json's record; a missing or damaged one means: not prepared (yet)."""
    info = _prepared_info(comp)
    if info is None:
        raise UserError(f"{comp.slug} is not prepared yet: run `make data COMP={comp.slug}` first")
    return info
