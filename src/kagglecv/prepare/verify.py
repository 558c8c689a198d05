"""The one decode of every prepared image, at `make data`: what will not decode never reaches training,
and what later stages need about each image is measured once and kept.

    layout -> staging/{train,test}/ -> verify_images(staging) -> folds -> data/<comp>/

    data/<comp>/images.csv    image,bytes,mtime,width,height,mode,phash,content (one row per image that
                              decodes, plus unreadable test images with width 0); `inspect` reads it
    prepared.json             unreadable_train: [train/<class>/<img>, ...]   left out of every fold
                              unreadable_test:  [<img>, ...]   (relative to test/, as submit names them)

Unreadable training images are removed from the staging train/ (raw/ keeps them); an unreadable
test image stays in test/, since Kaggle scores every id: submit fills its row with the class prior.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pandas as pd
from rich.markup import escape

from kagglecv.core.console import console, progress
from kagglecv.core.files import atomic_write
from kagglecv.core.images import IMAGE_EXTS, MAX_PIXELS, TOO_MANY_PIXELS, measure_file

IMAGES = "images.csv"
COLUMNS = ["image", "bytes", "mtime", "width", "height", "mode", "phash", "content"]
SHOW = 10  # names printed in a warning; the full list is in prepared.json
# Below this many images, worker processes cost more to start than they save.
PROCESS_MIN = 2000
CHUNK = 64


def _pool(n: int, workers: int, processes: bool | None) -> Executor:
    """Threads for a few images; processes for many (the hashing holds the GIL a good part of each
    image's time). Processes are forked (no re-import of the main module, which `spawn` would need)
    and all started here, before the progress bar starts its thread: a fork copies no thread's lock."""
    if processes is None:
        processes = n >= PROCESS_MIN and workers > 1
    if processes and sys.platform == "linux":
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        pool.submit(int).result()  # a fork context starts every worker at the first task
        return pool
    return ThreadPoolExecutor(workers)


def measure_many(
    paths: Sequence[Path],
    *,
    description: str,
    fn: Callable[[Path], Any] = measure_file,
    workers: int | None = None,
    processes: bool | None = None,
) -> list:
    """`fn` (a module-level function: processes pickle it) of every path, in parallel, in order,
    with a progress bar. Should worker processes die (out of memory), threads redo the rest."""
    workers = workers or os.cpu_count() or 1
    results: list = []
    try:
        pool = _pool(len(paths), workers, processes)
    except BrokenProcessPool:
        pool = ThreadPoolExecutor(workers)
    with progress() as bar, pool:
        task = bar.add_task(description, total=len(paths), info="")
        chunk = CHUNK if isinstance(pool, ProcessPoolExecutor) else 1
        try:
            for got in pool.map(fn, paths, chunksize=chunk):
                results.append(got)
                bar.advance(task)
        except BrokenProcessPool:
            with ThreadPoolExecutor(workers) as threads:
                for got in threads.map(fn, paths[len(results) :]):
                    results.append(got)
                    bar.advance(task)
    return results


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _warn(what: str, bad: pd.DataFrame, total: int, consequence: str, key: str) -> None:
    if bad.empty:
        return
    names = bad["image"].tolist()
    shown = ", ".join(escape(n) for n in names[:SHOW]) + (", …" if len(names) > SHOW else "")
    big = int((bad["mode"] == TOO_MANY_PIXELS).sum())
    why = f" ({big} of them over {MAX_PIXELS:,} pixels, kagglecv's cap)" if big else ""
    console.print(
        f"[yellow]warning:[/] {len(names)} of {total} {what} do not decode{why}: {shown}; {consequence} "
        f"(all listed in prepared.json under {key})",
        soft_wrap=True,
    )


def verify_images(staging: Path, **pool) -> dict:
    """Decode every image under staging/train and staging/test once: write staging/images.csv,
    remove the training images that do not decode, and return what prepared.json records."""
    train, test = image_files(staging / "train"), image_files(staging / "test")
    paths = train + test
    results = measure_many(paths, description="checking every image", **pool)
    rows = [(p.relative_to(staging).as_posix(), *r) for p, r in zip(paths, results, strict=True)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    broken = table["width"] == 0
    is_train = table["image"].str.startswith("train/")
    bad_train = table[broken & is_train]
    bad_test = table[broken & ~is_train].assign(image=lambda t: t["image"].str.removeprefix("test/"))
    for rel in bad_train["image"]:
        (staging / rel).unlink()  # a link to (or copy of) raw/: raw/ keeps the file
    kept = table[~(broken & is_train)]
    atomic_write(staging / IMAGES, lambda path: kept.to_csv(path, index=False))
    _warn("training images", bad_train, len(train), "left out of every fold", "unreadable_train")
    _warn(
        "test images",
        bad_test,
        len(test),
        "their submission rows get the training class prior",
        "unreadable_test",
    )
    return {"unreadable_train": bad_train["image"].tolist(), "unreadable_test": bad_test["image"].tolist()}


def read_images_csv(root: Path) -> dict[str, tuple]:
    """data/<comp>/images.csv as {image: (bytes, mtime, width, height, phash, content)}; empty where
    the data was prepared by an older kagglecv (no images.csv) or the file is unreadable."""
    return read_cache(root / IMAGES)


def read_cache(path: Path) -> dict[str, tuple]:
    try:
        df = pd.read_csv(path, dtype={"phash": str, "content": str, "image": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return {}
    need = ["image", "bytes", "mtime", "width", "height", "phash", "content"]
    if set(need) - set(df.columns):  # an older cache (no content column): measured again
        return {}
    return {r[0]: tuple(r[1:]) for r in df[need].itertuples(index=False)}


def cached_or_measured(
    root: Path, images: Iterable[str], caches: Sequence[dict[str, tuple]], description: str
) -> tuple[list[tuple], list[int]]:
    """Per image (relative to root): (bytes, mtime, width, height, phash, content) from the first
    cache whose size and mtime still match, else measured now; and the positions measured now."""
    images = list(images)
    results: list[tuple | None] = []
    for img in images:
        try:
            st = (root / img).stat()
        except OSError:
            results.append(None)  # gone: measure_file says so
            continue
        results.append(next((c[img] for c in caches if _fresh(c.get(img), st)), None))
    todo = [i for i, r in enumerate(results) if r is None]
    got = measure_many([root / images[i] for i in todo], description=description)
    for i, r in zip(todo, got, strict=True):
        results[i] = (r[0], r[1], r[2], r[3], r[5], r[6])
    return results, todo  # type: ignore[return-value]


def _fresh(hit: tuple | None, st: os.stat_result) -> bool:
    return hit is not None and int(hit[0]) == st.st_size and int(hit[1]) == st.st_mtime_ns
