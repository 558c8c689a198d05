"""timm model creation and the input size / mean / std the model expects.

The model decides its own input size and normalisation (its pretrained config) unless the recipe
overrides them; checkpoints store the resolved values so prediction never guesses.
"""

from __future__ import annotations

import difflib
import os
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
    import huggingface_hub.constants as hub

    was_offline, offline_note = hub.HF_HUB_OFFLINE, ""
    if pretrained and not pretrained_file and not _hub_reachable():
        # no network: read only the local cache, at once, instead of minutes of hub retries
        hub.HF_HUB_OFFLINE = True
        offline_note = f"{hub.ENDPOINT} is unreachable, so only the local cache was tried. "
    try:
        return timm.create_model(
            name,
            pretrained=pretrained or bool(pretrained_file),
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            **kwargs,
        )
    except Exception as e:  # hub unreachable, no cached copy, a file that is no checkpoint
        if not (pretrained or pretrained_file):
            raise
        said = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
        if pretrained_file:
            raise UserError(
                f"pretrained_file {pretrained_file} holds no weights for '{name}' ({said}); give a "
                ".safetensors/.pth state dict saved from that model, or pretrained=true / false"
            ) from None
        raise UserError(
            f"could not load pretrained weights for '{name}' ({said}). {offline_note}"
            "Offline? Put the weights in the Hugging Face cache (HF_HUB_OFFLINE=1 then reads only the cache), "
            "or set pretrained_file=<path to .safetensors/.pth>, or pretrained=false."
        ) from None
    finally:
        hub.HF_HUB_OFFLINE = was_offline


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the Hugging Face hub? (Behind a proxy we cannot tell: assume so.)"""
    import socket
    from urllib.parse import urlsplit

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(hub.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout
        ).close()
        return True
    except OSError:
        return False


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
