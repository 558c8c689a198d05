"""Training state that must survive a detour or a restart: every RNG stream, and CPU copies of tensors.

lr-find takes a snapshot and puts it back; a fold's resume file (fold<k>.last.pt) stores the same
dict, which loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import torch


def get_rng_state() -> dict:
    """Every random stream training draws from (torch, CUDA, numpy, random), as tensors and JSON, so
    the same dict restores lr-find's detour and loads with torch.load(weights_only=True) on resume."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": json.dumps([np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]),
        "random": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, gauss = json.loads(state["numpy_rest"])
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = json.loads(state["random"])
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        # resumed on another machine: restore as many GPUs' streams as both have
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_cpu(obj):
    """A deep copy with every tensor on the CPU (load_state_dict moves them back)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return copy.deepcopy(obj)
