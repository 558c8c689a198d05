"""timm model creation and the input size / mean / std the model expects.

The model decides its own input size and normalisation (its pretrained config) unless the recipe
overrides them; checkpoints store the resolved values so prediction never guesses.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config

from .errors import UserError


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
) -> torch.nn.Module:
    if name not in timm.list_models() and not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        raise UserError(f"unknown timm model '{name}'" + (f"; similar: {', '.join(close)}" if close else ""))
    kwargs = {}
    if pretrained_file and not Path(pretrained_file).is_file():
        raise UserError(
            f"pretrained_file {pretrained_file} not found: give the path of a .safetensors/.pth file"
        )
    if pretrained_file:
        kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
    try:
        return timm.create_model(
            name,
            pretrained=pretrained or bool(pretrained_file),
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            **kwargs,
        )
    except (OSError, RuntimeError, ValueError) as e:  # hub unreachable, no cached copy, bad file
        if not (pretrained or pretrained_file):
            raise
        raise UserError(
            f"could not load pretrained weights for '{name}' ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}). "
            "Offline? Put the weights in the Hugging Face cache (HF_HUB_OFFLINE=1 then reads only the cache), "
            "or set pretrained_file=<path to .safetensors/.pth>, or pretrained=false."
        ) from None


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to its device; on a GPU in channels_last, the layout its convolutions run fastest in
    (the Stepper feeds it channels_last batches to match)."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def resolve_input(model: torch.nn.Module, img_size: int | None, mean, std) -> dict:
    """The model's own input size / mean / std, overridden where the recipe says so."""
    dc = resolve_data_config(model=model)
    return {
        "img_size": int(img_size or dc["input_size"][-1]),
        "mean": [float(m) for m in (mean or dc["mean"])],
        "std": [float(s) for s in (std or dc["std"])],
    }
