"""One epoch of training, validation and prediction: plain PyTorch, returning dicts of metrics."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .data import to_input


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(device: torch.device, amp: bool):
    """bf16 where the GPU has it, else fp16 (with a GradScaler); full precision on the CPU."""
    if device.type != "cuda" or not amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def make_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    need = device.type == "cuda" and amp and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=need)


class Stepper:
    """The state a training step needs, bundled so lr-find and the epoch loop share one step."""

    def __init__(self, model, optimizer, device, mean, std, amp: bool, label_smoothing: float):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.amp = amp
        self.label_smoothing = label_smoothing
        self.channels_last = device.type == "cuda"
        self.scaler = make_scaler(device, amp)

    def inputs(self, x):
        return to_input(x, self.mean, self.std, self.device, self.channels_last)

    def step(self, x, y) -> float:
        x, y = self.inputs(x), y.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            loss = F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.item()


def train_one_epoch(stepper: Stepper, loader, scheduler, on_batch=None) -> dict:
    stepper.model.train()
    total, n = 0.0, 0
    for x, y in loader:
        loss = stepper.step(x, y)
        scheduler.step()
        total += loss * len(y)
        n += len(y)
        if on_batch:
            on_batch(loss)
    return {"train_loss": total / max(n, 1)}


@torch.no_grad()
def predict(stepper: Stepper, loader, flips: list[str] | None = None) -> np.ndarray:
    """Softmax probabilities, averaged over test-time flips (e.g. ["hflip"])."""
    stepper.model.eval()
    views = [None] + list(flips or [])
    out = []
    for x, _ in loader:
        x = stepper.inputs(x)
        p = 0
        for view in views:
            xv = x if view is None else torch.flip(x, dims=[3] if view == "hflip" else [2])
            with autocast(stepper.device, stepper.amp):
                p = p + stepper.model(xv).float().softmax(1)
        out.append((p / len(views)).cpu())
    return torch.cat(out).numpy()


def validate(stepper: Stepper, loader, labels: np.ndarray) -> dict:
    probs = predict(stepper, loader)
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return {"val_loss": float(-np.log(p).mean()), "probs": probs}
