"""Class activation heatmaps (Grad-CAM, from the `grad-cam` package): where on an image a fold
model looks when it predicts a class.

The target layer is chosen per architecture family from one dummy forward pass:
- CNNs (ResNet, ConvNeXt, EfficientNet, NFNet, MambaOut...): the last stage in timm's
  `feature_info` whose grid is still at least MIN_GRID cells on a side at the run's image size (a
  small image through a deep net ends on a 1x1 grid, which says nothing about *where*); channels
  last (NHWC) outputs are transposed.
- ViT-style models (ViT, DeiT, BEiT, EVA, CaiT, XCiT...): the tokens entering the last block
  (`blocks[-1].norm1`; a class-token model's last block output carries no gradient to the patch
  tokens), prefix tokens dropped, patches laid back on their grid (the patch embedding's patch size
  at the run's image size).
Anything else (several feature maps, a single token, tokens that fit no grid) is not supported:
one UserError line, which the caller turns into a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from kagglecv.core.errors import UserError

MIN_GRID = 4


@dataclass
class CamTarget:
    layer: torch.nn.Module
    reshape: Callable | None  # layer output -> NCHW
    what: str  # for the report: e.g. "layer3 (4x4)"


def _record_shapes(model: torch.nn.Module, size: int, in_chans: int):
    """forward_features on a zero image; every module's output shape (tensors only) by module."""
    shapes: dict[torch.nn.Module, tuple] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, _i, out: (
                shapes.__setitem__(mod, tuple(out.shape)) if isinstance(out, torch.Tensor) else None
            )
        )
        for m in model.modules()
    ]
    try:
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, in_chans, size, size))
    finally:
        for h in hooks:
            h.remove()
    return feats, shapes


def _unsupported(name: str, why: str) -> UserError:
    return UserError(
        f"heatmaps: {name} is not supported ({why}); kagglecv draws them for timm CNNs and ViT-style models"
    )


def cam_target(model: torch.nn.Module, name: str, size: int, in_chans: int = 3) -> CamTarget:
    """The layer Grad-CAM reads and how to lay its output out as NCHW (see the module docstring)."""
    if not hasattr(model, "forward_features"):
        raise _unsupported(name, "it has no forward_features")
    feats, shapes = _record_shapes(model, size, in_chans)
    if not isinstance(feats, torch.Tensor):
        raise _unsupported(name, f"its features are a {type(feats).__name__} of several maps")
    if feats.ndim == 4:
        return _cnn_target(model, name, size, feats, shapes)
    if feats.ndim == 3:
        return _token_target(model, name, size, feats, shapes)
    raise _unsupported(name, f"its features have shape {tuple(feats.shape)}")


def _cnn_target(model, name: str, size: int, feats: torch.Tensor, shapes: dict) -> CamTarget:
    stages = []
    for info in getattr(model, "feature_info", None) or []:
        try:
            mod = model.get_submodule(info["module"])
        except (AttributeError, KeyError):
            continue
        if len(shapes.get(mod, ())) == 4:
            stages.append((info["module"], mod, info["num_chs"]))
    if not stages:  # no usable feature_info: the last module that outputs the final feature map
        last = [m for m, s in shapes.items() if s == tuple(feats.shape)]
        stages = [("last feature map", last[-1], feats.shape[1])] if last else []
    if not stages:
        raise _unsupported(name, "no module outputs its feature map")
    grids = [min(_grid(shapes[m], chs)) for _, m, chs in stages]
    fine = [i for i, g in enumerate(grids) if g >= MIN_GRID]
    label, mod, chs = stages[fine[-1] if fine else 0]
    shape = shapes[mod]
    nhwc = shape[1] != chs and shape[-1] == chs
    h, w = _grid(shape, chs)
    return CamTarget(mod, (lambda t: t.permute(0, 3, 1, 2)) if nhwc else None, f"{label} ({h}x{w})")


def _grid(shape: tuple, chs: int) -> tuple[int, int]:
    return (shape[1], shape[2]) if shape[1] != chs and shape[-1] == chs else (shape[2], shape[3])


def _token_target(model, name: str, size: int, feats: torch.Tensor, shapes: dict) -> CamTarget:
    blocks = getattr(model, "blocks", None)
    last = (
        blocks[-1] if isinstance(blocks, torch.nn.Sequential | torch.nn.ModuleList) and len(blocks) else None
    )
    layer = getattr(last, "norm1", None)
    label = f"blocks.{len(blocks) - 1}.norm1" if layer is not None else "last token map"
    if layer is None or len(shapes.get(layer, ())) != 3:
        layer = next((m for m, s in reversed(shapes.items()) if s == tuple(feats.shape)), None)
    if layer is None:
        raise _unsupported(name, "no module outputs its tokens")
    n_tokens = shapes[layer][1]
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        h, w = size // patch[0], size // patch[1]
    else:  # no patch embedding: a square grid of tokens, if the count is a square
        h = w = math.isqrt(n_tokens)
    prefix = n_tokens - h * w
    if prefix < 0 or prefix > 8:
        raise _unsupported(name, f"{n_tokens} tokens fit no {h}x{w} patch grid")

    def reshape(t: torch.Tensor) -> torch.Tensor:
        t = t[:, prefix:, :]
        return t.reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    return CamTarget(layer, reshape, f"{label} ({h}x{w} patches)")


def heatmaps(model: torch.nn.Module, target: CamTarget, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Grad-CAM maps (B x H x W, each scaled to 0..1) of a normalised batch for the given classes."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[target.layer], reshape_transform=target.reshape) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heatmap (jet colours) over the image, as RGB uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=0.55)
