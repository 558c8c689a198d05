"""What `make data`'s one decode of every image costs, at Kaggle's size.

    python scripts/bench_data.py                    # dogs-vs-cats size: 25,000 train + 12,500 test JPEGs
    python scripts/bench_data.py --n 600 --pools    # a quick check, and threads vs processes for the pass

Writes N synthetic dogs-vs-cats-sized JPEGs (bench.synthetic_images, about 500x375), zips them as
Kaggle ships dogs-vs-cats (train.zip and test1.zip inside the competition zip), then times
  (a) unzip: the competition zip unpacked (kaggle source's extract_nested),
  (b) one parallel decode of every image (full PIL decode, one process per core),
  (c) `make data`'s prepare on competitions/dogs-vs-cats.yaml, the download replaced by that zip,
  (d) `inspect` on the prepared data,
and prints c / (a + b) (issue 10: at most 1.5) and d / b.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # this checkout's kagglecv, in worker processes too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))

import pandas as pd  # noqa: E402

from kagglecv import verify  # noqa: E402
from kagglecv.bench.throughput import synthetic_images  # noqa: E402
from kagglecv.core.images import decode  # noqa: E402

SLUG = "dogs-vs-cats"


def kaggle_zip(work: Path, n: int) -> Path:
    """work/<slug>.zip as Kaggle ships it: train.zip (train/cat.<i>.jpg, train/dog.<i>.jpg),
    test1.zip (test1/<i>.jpg) and sampleSubmission.csv; two thirds train, one third test."""
    target = work / f"{SLUG}.zip"
    if target.exists():
        return target
    n_test = n // 3
    train = synthetic_images(work / "gen" / "train", n - n_test)
    test = synthetic_images(work / "gen" / "test", n_test, seed=1)
    with zipfile.ZipFile(work / "train.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for p in train:
            z.write(p, f"train/{p.name}")
    with zipfile.ZipFile(work / "test1.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for i, p in enumerate(test, 1):
            z.write(p, f"test1/{i}.jpg")
    sample = pd.DataFrame({"id": range(1, n_test + 1), "label": 0}).to_csv(index=False)
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as z:
        z.write(work / "train.zip", "train.zip")
        z.write(work / "test1.zip", "test1.zip")
        z.writestr("sampleSubmission.csv", sample)
    partial.rename(target)
    for name in ("train.zip", "test1.zip"):
        (work / name).unlink()
    shutil.rmtree(work / "gen")
    return target


def _full_decode(path: Path) -> int:
    return decode(path.read_bytes())[0].width


def time_unzip_and_decode(archive: Path, scratch: Path) -> tuple[float, float, list[Path]]:
    from kagglecv.prepare.sources.archives import extract_nested

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    copy = scratch / archive.name
    os.link(archive, copy)
    start = time.perf_counter()
    extract_nested(copy, scratch / "raw")
    unzip = time.perf_counter() - start
    paths = sorted((scratch / "raw").rglob("*.jpg"))
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_full_decode, paths, chunksize=64))
    return unzip, time.perf_counter() - start, paths


def time_prepare_and_inspect(archive: Path, work: Path) -> tuple[float, float]:
    """`prepare` as `make data` runs it, in a scratch checkout whose download is the local zip."""
    import kagglecv.prepare.sources.kaggle as kaggle
    from kagglecv.core.competition import load_competition
    from kagglecv.prepare.inspect import inspect_data
    from kagglecv.prepare.layout import prepare

    def download(api, slug, folder, force=False, **retry):
        folder.mkdir(parents=True, exist_ok=True)
        os.link(archive, folder / f"{slug}.zip")  # fetch() removes it once unpacked
        return folder / f"{slug}.zip"

    kaggle.connect, kaggle.download = lambda: None, download
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(REPO / "competitions", work / "competitions")
    os.chdir(work)
    comp = load_competition(SLUG)
    start = time.perf_counter()
    prepare(comp)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    inspect_data(comp)
    return prepared, time.perf_counter() - start


def time_pools(paths: list[Path]) -> None:
    for processes in (False, True):
        start = time.perf_counter()
        verify.measure_many(paths, description="measure", processes=processes)
        kind = "processes" if processes else "threads"
        print(f"measure pass with {kind}: {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=37_500, help="images in all (two thirds train)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kagglecv-bench-data")
    parser.add_argument("--pools", action="store_true", help="also time the pass with threads and processes")
    args = parser.parse_args()
    os.environ.setdefault("KAGGLECV_NO_PROGRESS", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    archive = kaggle_zip(args.work.resolve(), args.n)
    unzip, decoded, paths = time_unzip_and_decode(archive, args.work.resolve() / "floor")
    if args.pools:
        time_pools(paths)
    shutil.rmtree(args.work.resolve() / "floor")
    prepared, inspected = time_prepare_and_inspect(archive, args.work.resolve() / "checkout")
    print(f"{args.n} images on {os.cpu_count()} cores")
    print(f"(a) unzip {unzip:.2f} s · (b) one parallel decode {decoded:.2f} s")
    print(f"(c) make data (prepare) {prepared:.2f} s · (d) inspect {inspected:.2f} s")
    print(f"c / (a + b) = {prepared / (unzip + decoded):.2f}  (issue 10: at most 1.5)")
    print(f"d / b = {inspected / decoded:.2f}  (was 2.45 before images.csv)")


if __name__ == "__main__":
    main()
