"""One augmentation description, and from it both training pipelines.

aug = Augment.from_recipe(cfg, hflip=comp.hflip, vflip=comp.vflip)
aug.per_item(seed)    # albumentations Compose for an ImageDataset (the DataLoader path)
aug.per_batch(seed)   # BatchAffine for MemoryBatches (in-RAM images, a batch at a time)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from kagglecv.core.errors import UserError


@dataclass(frozen=True)
class Augment:
    """The training jitter: the recipe's rotate (degrees), shift (fraction of the side) and scale
    (zoom +- fraction), and the flips the competition allows."""

    rotate: float = 0.0
    shift: float = 0.0
    scale: float = 0.0
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        if min(self.rotate, self.shift, self.scale) < 0 or self.scale >= 1:
            raise UserError(
                f"augmentation: rotate and shift must not be negative and scale must lie in [0, 1), "
                f"got rotate={self.rotate}, shift={self.shift}, scale={self.scale}"
            )

    @classmethod
    def from_recipe(cls, cfg, *, hflip: bool, vflip: bool) -> Augment:
        """The recipe's augmentation keys, with the flips the competition allows."""
        return cls(float(cfg.rotate), float(cfg.shift), float(cfg.scale), bool(hflip), bool(vflip))

    @property
    def affine(self) -> bool:
        """Any rotation, shift or zoom (else at most flips, which move pixels without resampling)."""
        return bool(self.rotate or self.shift or self.scale)

    def __bool__(self) -> bool:
        return self.affine or self.hflip or self.vflip

    def per_item(self, seed: int) -> A.Compose:
        """An albumentations Compose, seeded; `set_random_seed` reseeds it."""
        ops: list = []
        if self.affine:
            ops.append(
                A.Affine(
                    scale=(1 - self.scale, 1 + self.scale),
                    translate_percent=(-self.shift, self.shift),
                    rotate=(-self.rotate, self.rotate),
                    border_mode=cv2.BORDER_REPLICATE,
                    p=1.0,
                )
            )
        if self.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if self.vflip:
            ops.append(A.VerticalFlip(p=0.5))
        return A.Compose(ops, seed=seed)

    def per_batch(self, seed: int = 0) -> BatchAffine:
        """A BatchAffine over float NCHW batches, seeded; `set_random_seed` reseeds it."""
        return BatchAffine(self, seed)


class BatchAffine:
    """Random rotation (degrees), shift (fraction), zoom (+-fraction) and flips per image of a batch."""

    def __init__(self, spec: Augment, seed: int = 0):
        self.spec = spec
        self.gen = torch.Generator().manual_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        self.gen.manual_seed(int(seed))

    def _uniform(self, n: int, half_width: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.gen, dtype=torch.float64) * 2 - 1) * half_width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: float NCHW; returns the augmented batch (same shape, dtype and device)."""
        s = self.spec
        if not s:
            return x
        n = x.shape[0]
        angle = self._uniform(n, math.radians(s.rotate))
        zoom = 1 + self._uniform(n, s.scale)
        tx, ty = self._uniform(n, 2 * s.shift), self._uniform(n, 2 * s.shift)  # grid spans [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # output pixel -> where to sample the input: rotated, zoomed, shifted
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        for flip, column in ((s.hflip, 0), (s.vflip, 1)):  # a flip mirrors the output coordinate
            if flip:
                theta[:, :, column] *= torch.where(
                    torch.rand(n, generator=self.gen) < 0.5, -1.0, 1.0
                ).double()[:, None]
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
