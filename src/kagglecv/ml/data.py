"""Datasets and loaders over the prepared shape (the training jitter: augment.Augment).

Images are decoded and resized once per size: when the whole set fits in `cache_mb` they are kept in
RAM as one uint8 array, otherwise resized copies go to data/<comp>/cache/<size>/ so full-size JPEGs
are not decoded every epoch (progressive resizing builds one such cache per size). Batches stay uint8 until they reach the device, where they are normalised
(less to copy, and the GPU does the arithmetic).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kagglecv.core.competition import inside
from kagglecv.core.console import console, track
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.ml import dist

cv2.setNumThreads(1)  # the DataLoader parallelises across images; nested threads only fight


def _competition_of(path: Path) -> str:
    """The <slug> of data/<slug>/..., for advice that names the command to run."""
    parts = Path(path).parts
    found = [parts[i + 1] for i in range(len(parts) - 2) if parts[i] == "data"]
    return found[-1] if found else "<slug>"


def read_image(path: Path, size: int) -> np.ndarray:
    """Decode an image as RGB uint8, resized (squashed) to size x size."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(
            f"cannot decode image {path} (corrupt or not an image): delete it (and its copy under raw/), "
            f"then rerun `make data COMP={_competition_of(path)} FORCE=1`"
        )
    return squash(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def squash(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size, aspect not kept (INTER_AREA to shrink, else INTER_LINEAR): the one
    resize of training, prediction, `kagglecv predict` and the Kaggle notebook."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def preload(paths: list[Path], size: int, desc: str, bad: list[int] | None = None) -> np.ndarray:
    """Decode every image once into one array (the caller has checked that it fits in RAM). With a
    `bad` list, an unreadable image is left black and its index appended, instead of an error."""
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in track(list(enumerate(paths)), desc):
        try:
            out[i] = read_image(p, size)
        except UserError:
            if bad is None:
                raise
            bad.append(i)
    return out


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    """An RGB array as a JPEG, complete or not at all."""

    def write(tmp: Path) -> None:
        if not cv2.imwrite(
            str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        ):
            raise OSError(f"could not write {tmp}")

    atomic_write(path, write)


def _cache_one(src: Path, dst: Path, size: int) -> None:
    write_jpeg(dst, read_image(src, size))


def _cache_path(root: Path, image: Path, data_root: Path) -> Path:
    """Where `image` (under data_root) is cached: the same relative path under `root`."""
    try:
        rel = image.relative_to(data_root)
    except ValueError:
        rel = None
    if rel is None or not rel.parts or ".." in rel.parts:
        raise UserError(f"{image} lies outside {data_root}/; refusing to cache it under {root}/")
    return root / rel.with_suffix(".jpg")


def disk_cache(paths: list[Path], data_root: Path, size: int, bad: list[int] | None = None) -> list[Path]:
    """Resized JPEG copies under data/<comp>/cache/<size>/, built once (in parallel) and reused.
    With a `bad` list, the index of an unreadable image is appended instead of an error."""
    root = data_root / "cache" / str(size)
    out, todo = [], []
    for i, p in enumerate(paths):
        dst = _cache_path(root, Path(p), data_root)
        out.append(dst)
        if not dst.exists():
            todo.append((i, Path(p), dst))
    for _, _, dst in todo:  # nothing is written outside the cache, whatever a name or a link says
        inside(root, dst)
    if todo:
        for d in {dst.parent for _, _, dst in todo}:
            d.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # cv2 releases the GIL
            jobs = [(i, pool.submit(_cache_one, src, dst, size)) for i, src, dst in todo]
            for i, job in track(jobs, f"caching {len(todo)} images at {size}px"):
                try:
                    job.result()
                except UserError:
                    if bad is None:
                        raise
                    bad.append(i)
    return out


def cached_images(
    paths: list[Path],
    data_root: Path,
    size: int,
    mode: str,
    cache_mb: int,
    desc: str,
    bad: list[int] | None = None,
):
    """(paths to read, preloaded array or None) according to the cache mode. With a `bad` list,
    unreadable images are listed there (by index) instead of stopping everything."""
    fits = len(paths) * size * size * 3 <= cache_mb * 2**20
    if mode == "memory" or (mode == "auto" and fits):
        return paths, preload(paths, size, desc, bad)
    if mode in ("disk", "auto"):
        return disk_cache(paths, data_root, size, bad), None
    return paths, None


def training_set(paths: list[Path], labels: np.ndarray, data_root: Path, size: int, cfg, cuda: bool):
    """(dataset, loader workers): the training images at one size, decoded or cached once as the
    recipe's cache mode says, with a readable stand-in for any image that broke since `make data`."""
    bad: list[int] = []
    read, images = cached_images(
        paths, data_root, size, cfg.cache, cfg.cache_mb, f"decoding train images at {size}px", bad=bad
    )
    read = list(read)
    for i, j in stand_ins(labels, set(bad)).items():
        warn_unreadable(paths[i])
        if images is not None:
            images[i] = images[j]
        else:
            read[i] = read[j]
    dataset = ImageDataset(read, labels, size, images, stand_in=True)
    return dataset, default_workers(cfg.workers, images is not None, cuda)


def stand_ins(labels: np.ndarray, unreadable: set[int]) -> dict[int, int]:
    """For each unreadable image, a readable one of the same class to train on in its place (the
    next one in order), so one image that broke after `make data` never stops a training."""
    out = {}
    for i in sorted(unreadable):
        same = np.flatnonzero(labels == labels[i])
        good = [j for j in np.roll(same, -int(np.searchsorted(same, i))) if j not in unreadable]
        if not good:
            raise UserError(f"no readable image of class index {labels[i]} is left; rerun `make data`")
        out[i] = int(good[0])
    return out


class ImageDataset(Dataset):
    """(uint8 CHW tensor, label) pairs from image files or a preloaded array.

    With `stand_in=True` (training), an image that cannot be decoded any more is replaced by the
    next image of its class, with one warning naming it, instead of a DataLoader worker traceback."""

    def __init__(
        self, paths, labels, size: int, images: np.ndarray | None = None, transform=None, stand_in=False
    ):
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size = size
        self.images = images
        self.transform = transform
        self.stand_in = stand_in
        self._warned: set[Path] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, i: int) -> np.ndarray:
        if self.images is not None:
            return self.images[i]
        if not self.stand_in:
            return read_image(self.paths[i], self.size)
        tried: set[int] = set()
        while True:
            try:
                return read_image(self.paths[i], self.size)
            except UserError:
                if self.paths[i] not in self._warned:
                    self._warned.add(self.paths[i])
                    warn_unreadable(self.paths[i])
                tried.add(i)
                same = [j for j in np.flatnonzero(self.labels == self.labels[i]) if j not in tried]
                if not same:
                    raise
                i = int(same[0])

    def __getitem__(self, i: int):
        img = self._read(i)
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), int(self.labels[i])

    def subset(self, idx, transform=None) -> ImageDataset:
        images = self.images[idx] if self.images is not None else None
        return ImageDataset(
            [self.paths[i] for i in idx], self.labels[idx], self.size, images, transform, self.stand_in
        )


def warn_unreadable(path: Path) -> None:
    console.print(
        f"[yellow]warning:[/] cannot decode {path} (changed since `make data`?): training uses another "
        "image of its class in its place; `make data FORCE=1` leaves it out for good",
        soft_wrap=True,
    )


def _seed_worker(worker_id: int) -> None:
    # each worker gets its own augmentation stream, derived from torch's seed for that worker
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        transform.set_random_seed(torch.initial_seed() % 2**32)


def default_workers(workers: int | None, in_memory: bool, cuda: bool = False) -> int:
    """The recipe's `workers`, else one per core (up to 8); none for images already in RAM when the
    CPU also trains (workers would only take cores from the model; a GPU needs them to keep up)."""
    if workers is not None:
        return workers
    cores = (os.cpu_count() or 1) // dist.local_world_size()  # torchrun: the ranks share the machine
    return 0 if in_memory and not cuda else max(1, min(cores, 8))


def make_loader(
    ds: ImageDataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int = 0,
    pin: bool = False,
    persistent: bool = True,
    sampler=None,
) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        # no 1-image batch for BatchNorm; under DDP what counts is this rank's share of the data
        drop_last=shuffle and (len(sampler) if sampler is not None else len(ds)) > batch_size,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=gen,
    )


def to_input(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """uint8 NCHW batch -> normalised float on the device."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
