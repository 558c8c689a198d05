"""timm model creation and the input size / mean / std the model expects.

The model decides its own input size and normalisation (its pretrained config) unless the recipe
overrides them; checkpoints store the resolved values so prediction never guesses.
"""

from __future__ import annotations

import difflib
import os
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config

from kagglecv.core.errors import UserError


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
) -> torch.nn.Module:
    """A timm model with `num_classes` outputs: random weights, timm's pretrained ones (hub or its
    cache), or a user's weights file, which kagglecv loads itself, weights-only, whatever timm does."""
    if name not in timm.list_models() and not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        raise UserError(f"unknown timm model '{name}'" + (f"; similar: {', '.join(close)}" if close else ""))
    build = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if pretrained_file:
        model = timm.create_model(name, pretrained=False, **build)
        load_weights_file(model, Path(pretrained_file), name)
        return model
    if not pretrained:
        return timm.create_model(name, pretrained=False, **build)
    import huggingface_hub.constants as hub

    was_offline, offline_note = hub.HF_HUB_OFFLINE, ""
    if not _hub_reachable():
        # no network: read only the local cache, at once, instead of minutes of hub retries
        hub.HF_HUB_OFFLINE = True
        offline_note = f"{hub.ENDPOINT} is unreachable, so only the local cache was tried. "
    try:
        return timm.create_model(name, pretrained=True, **build)
    except Exception as e:  # hub unreachable, no cached copy
        said = f"{type(e).__name__}: {textwrap.shorten(str(e), width=240, placeholder=' …')}"
        raise UserError(
            f"could not load pretrained weights for '{name}' ({said}). {offline_note}"
            "Offline? Put the weights in the Hugging Face cache (HF_HUB_OFFLINE=1 then reads only the cache), "
            "or set pretrained_file=<path to .safetensors/.pth>, or pretrained=false."
        ) from None
    finally:
        hub.HF_HUB_OFFLINE = was_offline


def read_weights_file(path: Path) -> dict:
    """A state dict from a .safetensors file, or from a torch file loaded weights-only: a pickle that
    would run code is refused, never executed."""
    import pickle

    if not path.is_file():
        raise UserError(f"pretrained_file {path} not found: give the path of a .safetensors/.pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UserError(
                f"refused pretrained_file {path}: it holds pickled code, not just weights; save it with "
                "torch.save(model.state_dict(), path) or as .safetensors"
            ) from None
        raise UserError(f"pretrained_file {path} is not a weights file ({type(e).__name__})") from None
    except Exception as e:  # truncated, not a torch file, a safetensors header error
        raise UserError(f"pretrained_file {path} is not a weights file ({type(e).__name__})") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"pretrained_file {path} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_file(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a user's weights into `model` the way timm loads pretrained ones: a classifier head of
    another size is dropped (the model keeps its fresh head), every other weight must fit."""
    state = read_weights_file(path)
    own = model.state_dict()
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    for head in heads:
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in state and key in own and state[key].shape != own[key].shape:
                del state[key]
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.startswith(heads or ("\0",))]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        what = (
            f"{len(wrong)} of another shape, e.g. {wrong[0]}"
            if wrong
            else f"{len(missing)} missing, e.g. {missing[0]}"
            if missing
            else f"{len(unexpected)} unknown, e.g. {unexpected[0]}"
        )
        raise UserError(
            f"pretrained_file {path} holds no weights for '{name}' ({what}); give a .safetensors/.pth "
            "state dict saved from that model, or pretrained=true / false"
        )
    model.load_state_dict(state, strict=False)


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


@dataclass
class ModelInput:
    """What a model is fed: the image size and the per-channel normalisation."""

    img_size: int
    mean: list[float]
    std: list[float]

    def to_json(self) -> dict:
        """The img_size, mean and std keys of a checkpoint's meta."""
        return asdict(self)


def resolve_input(model: torch.nn.Module, img_size: int | None, mean, std) -> ModelInput:
    """The model's own input size / mean / std, overridden where the recipe says so."""
    dc = resolve_data_config(model=model)
    return ModelInput(
        img_size=int(img_size or dc["input_size"][-1]),
        mean=[float(m) for m in (mean or dc["mean"])],
        std=[float(s) for s in (std or dc["std"])],
    )
