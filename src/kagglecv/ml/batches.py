"""Batches straight from the in-RAM image array, augmented a whole batch at a time.

    dl = memory_batches(dataset, Augment.from_recipe(cfg, hflip=True, vflip=False), batch_size=64,
                        shuffle=True, seed=3)

When the resized images sit in RAM as one uint8 array (data.cached_images) and no DataLoader
workers are wanted (the CPU trains), a DataLoader costs more than the model on small images: one
albumentations call, one tensor and one collate per image. Here a batch is one fancy index into the
array, and the recipe's rotation, shift, zoom and flips are one affine_grid + grid_sample over the
whole batch (augment.BatchAffine: a draw means what it means to the per-image transform), on the
training device.

It quacks like the DataLoader train/one_fold.py seeds every epoch: `generator` (shuffling), `sampler` (None)
and `dataset.transform.set_random_seed` (the augmentation stream), so a resumed run draws exactly
what an uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np
import torch

from kagglecv.ml.augment import Augment


class _View:
    """What train/one_fold.py reaches through `loader.dataset`: the transform to reseed, and the length."""

    def __init__(self, n: int, transform):
        self.n, self.transform = n, transform

    def __len__(self) -> int:
        return self.n


class MemoryBatches:
    """(float NCHW on `device` in 0..255, labels) batches of an in-RAM uint8 NHWC array."""

    sampler = None

    def __init__(
        self,
        images: np.ndarray,
        labels,
        *,
        batch_size: int,
        shuffle: bool,
        augment=None,
        seed=0,
        device="cpu",
    ):
        self.images, self.labels = images, torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.batch_size, self.shuffle, self.device = batch_size, shuffle, torch.device(device)
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.dataset = _View(len(images), augment if augment is not None else Augment().per_batch())
        # as the DataLoader: no 1-image batch for BatchNorm while training
        self.drop_last = shuffle and len(images) > batch_size

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator).numpy() if self.shuffle else np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = torch.from_numpy(self.images[idx]).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float()
            if self.augment is not None:
                x = self.augment(x)
            yield x, self.labels[idx]


def memory_batches(
    ds, augment: Augment, *, batch_size: int, shuffle: bool, seed: int, device
) -> MemoryBatches:
    """A data.ImageDataset's in-RAM images as MemoryBatches; augmented (`augment.per_batch`) when shuffled."""
    augment = augment.per_batch(seed) if shuffle else None
    return MemoryBatches(
        ds.images,
        ds.labels,
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
        device=device,
    )


def fits(ds, workers: int, ddp: bool) -> bool:
    """Batch the array directly: images in RAM, no workers asked for, no DDP sampler to honour."""
    return getattr(ds, "images", None) is not None and workers == 0 and not ddp
