"""One augmentation description, and from it both training pipelines.

    aug = Augment.from_recipe(cfg, hflip=comp.hflip, vflip=comp.vflip)
    aug.per_item(seed)    # albumentations Compose for an ImageDataset (the DataLoader path)
    aug.per_batch(seed)   # BatchAffine for MemoryBatches (in-RAM images, a batch at a time)

A draw means the same on both paths, so a run scores alike whichever path its data takes:

- rotation: an angle ~ U(-rotate, rotate) degrees about the image centre;
- zoom: one factor ~ U(1 - scale, 1 + scale) for both axes (> 1 magnifies: the content grows);
- shift: the image centre moves by dx ~ U(-shift, shift) of the width and, independently,
  dy ~ U(-shift, shift) of the height, in the output image and to a fraction of a pixel;
- flips: left-right with probability 0.5 where the competition allows hflip, top-bottom with
  probability 0.5 where it allows vflip, independently of each other and of the rest;
- sampling: bilinear, border pixels replicated (no black corners), pixel centres at i + 0.5.

Both paths turn a draw into the same map (`_inverse_maps`: output pixel -> input pixel it samples);
the per-item one warps with OpenCV, the per-batch one with affine_grid + grid_sample. Only the
random streams differ: Python's `random` per image (albumentations' seeding), one torch Generator
per batch. tests/test_augment.py measures both paths back from images and compares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
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
        """An albumentations Compose of one ItemAffine, seeded; `set_random_seed` reseeds it."""
        return A.Compose([ItemAffine(self)] if self else [], seed=seed)

    def per_batch(self, seed: int = 0) -> BatchAffine:
        """A BatchAffine over float NCHW batches, seeded; `set_random_seed` reseeds it."""
        return BatchAffine(self, seed)


def _inverse_maps(angle, zoom, dx, dy, hflip, vflip, h: int, w: int) -> np.ndarray:
    """N x 2 x 3: for each draw, the affine map from an output pixel to the input pixel it samples,
    both about the image centre (pixel units). angle in degrees, dx/dy fractions of the side,
    hflip/vflip booleans; the flips mirror the result of the rotation, zoom and shift."""
    a = np.radians(np.asarray(angle, dtype=np.float64))
    zoom = np.asarray(zoom, dtype=np.float64)
    cos, sin = np.cos(a) / zoom, np.sin(a) / zoom
    fx, fy = np.where(hflip, -1.0, 1.0), np.where(vflip, -1.0, 1.0)
    # forward: out = D (zoom R (in) + t) about the centre, D the flips; inverse: in = R^-1 / zoom (D out - t)
    # (a positive angle turns the content counter-clockwise on screen, as albumentations' Affine does)
    inv = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # R^-1 / zoom, N x 2 x 2
    t = np.stack([np.asarray(dx, dtype=np.float64) * w, np.asarray(dy, dtype=np.float64) * h], -1)
    lin = inv * np.stack([fx, fy], -1)[..., None, :]  # R^-1 / zoom @ D
    return np.concatenate([lin, -(inv @ t[..., None])], -1)


class ItemAffine(A.ImageOnlyTransform):
    """An Augment applied to one HWC image: one draw from the transform's own random stream (so
    the flips are independent of each other and of the affine), one cv2.warpAffine."""

    def __init__(self, spec: Augment, p: float = 1.0):
        super().__init__(p=p)
        self.spec = spec

    def get_params(self) -> dict:
        s, r = self.spec, self.py_random
        return {
            "angle": r.uniform(-s.rotate, s.rotate),
            "zoom": r.uniform(1 - s.scale, 1 + s.scale),
            "dx": r.uniform(-s.shift, s.shift),
            "dy": r.uniform(-s.shift, s.shift),
            "flip_h": s.hflip and r.random() < 0.5,
            "flip_v": s.vflip and r.random() < 0.5,
        }

    def apply(self, img: np.ndarray, angle, zoom, dx, dy, flip_h, flip_v, **params) -> np.ndarray:
        if not self.spec.affine:  # flips alone: mirror, no resampling
            return img[:: -1 if flip_v else 1, :: -1 if flip_h else 1]
        h, w = img.shape[:2]
        lin, t = np.split(_inverse_maps(angle, zoom, dx, dy, flip_h, flip_v, h, w), [2], -1)
        c = np.array([(w - 1) / 2, (h - 1) / 2])[:, None]
        m = np.concatenate([lin, c - lin @ c + t], -1)  # the same map in pixel indices
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(img, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("spec",)


class BatchAffine:
    """An Augment applied to a float NCHW batch: one draw per image from one torch Generator, one
    affine_grid + grid_sample for the batch, on the batch's device."""

    def __init__(self, spec: Augment, seed: int = 0):
        self.spec = spec
        self.gen = torch.Generator().manual_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        self.gen.manual_seed(int(seed))

    def _uniform(self, n: int, half_width: float) -> np.ndarray:
        return ((torch.rand(n, generator=self.gen, dtype=torch.float64) * 2 - 1) * half_width).numpy()

    def _coin(self, n: int, allowed: bool) -> np.ndarray:
        return (torch.rand(n, generator=self.gen) < 0.5).numpy() if allowed else np.zeros(n, bool)

    def draw(self, n: int) -> dict[str, np.ndarray]:
        """The next n draws, as ItemAffine.get_params names them (one array each)."""
        s = self.spec
        angle, zoom = self._uniform(n, s.rotate), 1 + self._uniform(n, s.scale)
        dx, dy = self._uniform(n, s.shift), self._uniform(n, s.shift)
        flip_h, flip_v = self._coin(n, s.hflip), self._coin(n, s.vflip)
        return {"angle": angle, "zoom": zoom, "dx": dx, "dy": dy, "flip_h": flip_h, "flip_v": flip_v}

    def apply(self, x: torch.Tensor, angle, zoom, dx, dy, flip_h, flip_v) -> torch.Tensor:
        """x (float NCHW) moved by the given draws, one per image."""
        h, w = x.shape[2], x.shape[3]
        lin, t = np.split(_inverse_maps(angle, zoom, dx, dy, flip_h, flip_v, h, w), [2], -1)
        # grid_sample's coordinates (align_corners=False): offset from the centre = half side * g
        half = np.array([w / 2, h / 2])
        theta = np.concatenate([lin * half[None, :] / half[:, None], t / half[:, None]], -1)
        grid = F.affine_grid(
            torch.from_numpy(theta).to(x.device, x.dtype), list(x.shape), align_corners=False
        )
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: float NCHW; returns the augmented batch (same shape, dtype and device)."""
        return self.apply(x, **self.draw(x.shape[0])) if self.spec else x
