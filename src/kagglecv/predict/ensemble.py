"""The one inference core: a run's fold models (or an export's) and how every caller asks them.

    models = load_fold_models(run_dir, [0, 1, 2], device)          # fold<k>.pt rebuilt from its meta
    ens = Ensemble.from_folds(models, flips=["hflip"], scales=[1.0])
    probs = ens.probs(loader)                        # each fold with its flips, averaged over the folds
    probs, errors = ens.predict_files(paths)         # decoded CHUNK at a time, the larger-scale view mixed in

    ens = Ensemble.from_export(Path("exports/x"), device)          # model.json + fold<k>.safetensors

`make submit` (test_set.py: its own decode and cache, then ens.probs per image size),
`kagglecv predict` (new_images.py), the TTA choice on OOF (tta.py, one Stepper per fold), the
export and its parity check (ship/export.py) and the Kaggle notebook (ship/notebook.py) all predict
through this module, so a fold's Stepper is built from its checkpoint meta in one place and the
larger-scale view is mixed in one place (`mix_scale_view`). Probabilities here are raw: the
post-processing chosen on OOF is the caller's to apply (predict/postprocess.py).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from kagglecv.core.checkpoint import CheckpointMeta, load_checkpoint
from kagglecv.core.config import TrainConfig, config_from_dict
from kagglecv.core.errors import UserError
from kagglecv.core.images import IMAGE_EXTS, decode
from kagglecv.ml.data import squash
from kagglecv.ml.engine import Stepper, predict
from kagglecv.ml.model import create_model, place

CHUNK = 64  # images decoded and predicted at a time: memory stays flat on a folder of 100k


@dataclass
class FoldModel:
    """One fold's network, ready to predict, with what its checkpoint says about it."""

    fold: int
    model: torch.nn.Module
    meta: CheckpointMeta
    config: TrainConfig


def load_fold_models(run_dir: Path, fold_ids: list[int], device: torch.device) -> list[FoldModel]:
    """fold<k>.pt for each fold id, rebuilt from the checkpoint's own model name and config."""
    models = []
    for fold in fold_ids:
        path = run_dir / f"fold{fold}.pt"
        if not path.exists():
            raise UserError(
                f"run {run_dir.name} is missing {path.name} (its summary lists folds {list(fold_ids)}); "
                f"copy the fold back, or retrain it with `make train RUN={run_dir.name} RESUME=1`"
            )
        state, meta = load_checkpoint(path)
        try:
            cfg = config_from_dict(meta.config)
        except UserError as e:
            raise UserError(f"{path}: {e} (the checkpoint's recipe is not one this kagglecv reads)") from None
        model = create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans)
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise UserError(
                f"{path}: weights do not fit {meta.model}; the checkpoint is damaged, retrain"
            ) from None
        models.append(FoldModel(fold, place(model, device).eval(), meta, cfg))
    return models


def prediction_stepper(model: torch.nn.Module, meta: CheckpointMeta, amp: bool, amp_dtype: str) -> Stepper:
    """A Stepper that feeds `model` as it was trained (its mean/std), on the device it sits on."""
    device = next(model.parameters()).device
    return Stepper(model, device=device, mean=meta.mean, std=meta.std, amp=amp, amp_dtype_name=amp_dtype)


def fold_stepper(fm: FoldModel) -> Stepper:
    return prediction_stepper(fm.model, fm.meta, fm.config.amp, fm.config.amp_dtype)


def mix_scale_view(probs: np.ndarray, scaled: np.ndarray, n_flips: int) -> np.ndarray:
    """Add the larger-scale view (FixRes) to `probs`, the average of the plain view and `n_flips`
    flips, as one more view of equal weight."""
    return (probs * (1 + n_flips) + scaled) / (2 + n_flips)


def load_image(path: Path, size: int) -> np.ndarray | str:
    """RGB uint8 at size x size, decoded as the folder source decodes (CMYK, 16-bit, palette,
    EXIF-rotated ...), or why the file cannot be read (a short reason)."""
    if path.suffix.lower() not in IMAGE_EXTS:
        return f"extension {path.suffix or '(none)'} is not an image's"
    try:
        data = path.read_bytes()
    except OSError as e:
        return e.strerror or type(e).__name__
    if not data:
        return "empty file"
    try:
        rgb = decode(data)[0]
    except Exception as e:  # noqa: BLE001 -- damaged files raise all sorts (struct.error, EOFError, ...)
        return f"cannot decode ({decode_reason(e)})"
    return squash(np.asarray(rgb, dtype=np.uint8), size)


def decode_reason(e: Exception) -> str:
    """Why a file did not decode, in a user's words: no "<_io.BytesIO object at 0x…>" (Pillow's
    text for a file it does not recognise). The exported predict.py words it the same."""
    if str(e).startswith(
        "cannot identify image file"
    ):  # PIL.UnidentifiedImageError (core.images re-raises it)
        return "not an image Pillow or OpenCV can read"
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e))[:80] or type(e).__name__


@dataclass
class Ensemble:
    """Fold models on one device that predict at one size, with the TTA views they average."""

    models: list[torch.nn.Module]
    folds: list[int]
    meta: CheckpointMeta  # the first fold's: model name, classes, input channels, mean/std
    img_size: int  # the size predicted at (the recipe's test_size, else the size validated at)
    amp: bool = False
    amp_dtype: str = "auto"
    flips: list[str] = field(default_factory=list)  # test-time flips (chosen on OOF: tta.py)
    scales: list[float] = field(default_factory=lambda: [1.0])  # 1.0, plus a larger scale where chosen
    postprocess: dict = field(default_factory=dict)  # chosen on OOF; applied by the caller
    run_dir: Path | None = None

    @classmethod
    def from_folds(cls, models: list[FoldModel], **kw) -> Ensemble:
        first = models[0]
        return cls(
            models=[fm.model for fm in models],
            folds=[fm.fold for fm in models],
            meta=first.meta,
            img_size=first.meta.predict_size,
            amp=first.config.amp,
            amp_dtype=first.config.amp_dtype,
            **kw,
        )

    @classmethod
    def from_export(cls, folder: Path, device, amp: bool = False, amp_dtype: str = "auto") -> Ensemble:
        """An export folder (model.json + fold<k>.safetensors), as the Kaggle notebook loads it."""
        from safetensors.torch import load_file

        spec = json.loads((folder / "model.json").read_text())
        meta = CheckpointMeta.from_json(spec)
        models = []
        for name in spec["weights"]:
            model = create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans)
            model.load_state_dict(load_file(str(folder / name)))
            models.append(model.to(device).eval())
        return cls(
            models=models,
            folds=[int(f) for f in spec.get("folds", range(len(models)))],
            meta=meta,
            img_size=int(spec["img_size"]),
            amp=amp,
            amp_dtype=amp_dtype,
            flips=list(spec.get("tta", [])),
            scales=list(spec.get("tta_scales_in_submit", [1.0])),
            postprocess=spec.get("postprocess") or {},
        )

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def extra_scales(self) -> list[float]:
        return [s for s in self.scales if s != 1.0]

    @cached_property
    def steppers(self) -> list[Stepper]:
        return [prediction_stepper(m, self.meta, self.amp, self.amp_dtype) for m in self.models]

    def probs(self, batches, flips: list[str] | None = None) -> np.ndarray:
        """N x C softmax probabilities of `batches` (a loader, or a list of (uint8 NCHW, _) batches):
        each fold averaged over the plain view and `flips` (default: the ensemble's), then over the folds."""
        flips = self.flips if flips is None else flips
        total = 0
        for stepper in self.steppers:
            total = total + predict(stepper, batches, flips)
        return total / len(self.steppers)

    def predict_array(self, images: np.ndarray, flips: list[str] | None = None) -> np.ndarray:
        """`probs` of uint8 N x H x W x 3 images already at the ensemble's size."""
        batch = [(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), None)]
        return self.probs(batch, flips)

    def predict_files(self, paths: list[Path]) -> tuple[np.ndarray, dict[int, str]]:
        """N x C probabilities with the ensemble's views (NaN rows for files that do not decode) and
        {row: reason} for those files; images are decoded CHUNK at a time."""
        probs = np.full((len(paths), len(self.classes)), np.nan)
        errors: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:  # cv2/PIL free the GIL
            for start in range(0, len(paths), CHUNK):
                rows = list(range(start, min(start + CHUNK, len(paths))))
                loaded = list(pool.map(lambda i: load_image(paths[i], self.img_size), rows))
                good, images = [], []
                for i, img in zip(rows, loaded, strict=True):
                    if isinstance(img, str):
                        errors[i] = img
                    else:
                        good.append(i)
                        images.append(img)
                if not good:
                    continue
                p = self.predict_array(np.stack(images))
                for s in self.extra_scales:
                    size = int(round(self.img_size * s))
                    bigger = np.stack(list(pool.map(lambda i, size=size: load_image(paths[i], size), good)))
                    p = mix_scale_view(p, self.predict_array(bigger, []), len(self.flips))
                probs[good] = p
        return probs, errors
