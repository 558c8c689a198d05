"""One epoch of training, validation and prediction: plain PyTorch, returning dicts of metrics."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from kagglecv.core.errors import UserError
from kagglecv.ml.data import to_input


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def amp_dtype(device: torch.device, amp: bool, name: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for full precision. auto: bf16 where the GPU has it, else fp16,
    and full precision on the CPU; bf16/fp16 force that dtype on any device."""
    if not amp:
        return None
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"amp_dtype=bf16 but {torch.cuda.get_device_name(device)} has no bf16: use auto or fp16"
        )
    if name in ("bf16", "fp16"):
        return torch.bfloat16 if name == "bf16" else torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def set_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Train only the classifier head (fastai's freeze), or everything."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad = not frozen or id(p) in head


def freeze_bn_stats(model: torch.nn.Module) -> None:
    """While the body is frozen its BatchNorm layers keep their pretrained statistics."""
    head = set(model.get_classifier().modules())
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m not in head:
            m.eval()


class Stepper:
    """What a training step needs, bundled so lr-find and the epoch loop share one step.

    Two names for the model: `model` is the plain module (its state_dict is what we save, EMA
    follows it); `net` is what runs the forward pass: the same module, torch.compile'd with
    `compile`, and wrapped in DistributedDataParallel by `set_phase` with `ddp` (gradients are then
    all-reduced once per optimizer step). Gradients are accumulated over `accum` batches; `mixup`
    (timm's Mixup) turns labels into soft targets; `ema` (ModelEmaV3) follows the weights after
    every optimizer step. Prediction needs no optimizer (None).
    """

    def __init__(
        self,
        model,
        *,
        device,
        mean,
        std,
        optimizer=None,
        amp: bool = True,
        amp_dtype_name: str = "auto",
        label_smoothing: float = 0.0,
        accum: int = 1,
        mixup=None,
        compile: bool = False,
        ddp: bool = False,
    ):
        self.model, self.optimizer, self.device = model, optimizer, device
        # what DDP wraps, anew for each phase: the module, or its compiled form
        self._compiled = torch.compile(model) if compile else model
        self.net = self._compiled
        self.ddp = ddp
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.dtype = amp_dtype(device, amp, amp_dtype_name)
        self.label_smoothing = label_smoothing
        self.channels_last = device.type == "cuda"
        self.scaler = make_scaler(device, self.dtype)
        self.accum = accum
        self.mixup = mixup
        self.ema = None
        self.frozen = False
        self._micro = 0

    def set_phase(self, frozen: bool) -> None:
        """Head only (fastai's freeze) or everything. DDP reduces only the parameters that needed
        gradients when it was built, so under DDP the wrapper is built anew for each phase."""
        set_frozen(self.model, frozen)
        self.frozen = frozen
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self._compiled, device_ids=ids)

    def inputs(self, x):
        return to_input(x, self.mean, self.std, self.device, self.channels_last)

    def step(self, x, y, last: bool = False) -> tuple[torch.Tensor, bool]:
        """Forward + backward on one batch; an optimizer step every `accum` batches (and after the
        `last` batch of an epoch). Returns (loss, stepped); the loss stays on the device, since
        reading it (.item()) would make the CPU wait for the GPU on every batch."""
        x, y = self.inputs(x), y.to(self.device, non_blocking=True)
        boundary = last or (self._micro + 1) % self.accum == 0
        # under DDP, all-reduce the gradients only on the micro-batch before an optimizer step
        sync = self.net.no_sync() if self.ddp and not boundary else contextlib.nullcontext()
        with sync:
            with autocast(self.device, self.dtype):
                if self.mixup is not None and len(y) % 2 == 0:
                    x, soft = self.mixup(x, y)
                    logits = self.net(x)
                    loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
                else:
                    loss = F.cross_entropy(self.net(x).float(), y, label_smoothing=self.label_smoothing)
            self.scaler.scale(loss / self.accum).backward()
        self._micro += 1
        stepped = self._micro % self.accum == 0
        if stepped:
            self.optimizer_step()
        return loss.detach(), stepped

    def optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # flush the gradients as soon as we can
        self.optimizer.zero_grad(set_to_none=True)
        self._micro = 0
        if self.ema is not None:
            self.ema.update(self.model)

    def train_mode(self) -> None:
        self.model.train()
        if self.frozen:
            freeze_bn_stats(self.model)


def train_one_epoch(stepper: Stepper, loader, scheduler, on_batch=None, show_every: int = 20) -> dict:
    """One pass over `loader`. `on_batch(loss)` after every batch, with the loss as a float every
    `show_every` batches and None in between (a float costs a CPU-GPU sync)."""
    stepper.train_mode()
    total, n = torch.zeros((), device=stepper.device), 0
    n_batches = len(loader)
    for i, (x, y) in enumerate(loader):
        loss, stepped = stepper.step(x, y, last=i == n_batches - 1)
        if stepped:
            scheduler.step()
        total += loss.float() * len(y)
        n += len(y)
        if on_batch:
            on_batch(loss.item() if i % show_every == 0 or i == n_batches - 1 else None)
    if stepper._micro:  # a last, partial accumulation still counts as a step
        stepper.optimizer_step()
        scheduler.step()
    return {"train_loss": total.item() / max(n, 1)}


def steps_per_epoch(n_batches: int, accum: int) -> int:
    return -(-n_batches // accum)


FLIP_DIMS = {"hflip": [3], "vflip": [2], "hvflip": [2, 3]}  # test-time flips: the tensor dims they mirror


def predict_views(
    stepper: Stepper, loader, views: list[str | None], model=None
) -> dict[str | None, np.ndarray]:
    """Softmax probabilities for each view of the images (None: as they are; or a FLIP_DIMS flip), one
    decode per batch for all the views."""
    model = model or stepper.model
    model.eval()
    out: dict[str | None, list] = {v: [] for v in views}
    with torch.no_grad():
        for x, _ in loader:
            x = stepper.inputs(x)
            for v in views:
                xv = x if v is None else torch.flip(x, dims=FLIP_DIMS[v])
                with autocast(stepper.device, stepper.dtype):
                    out[v].append(model(xv).float().softmax(1).cpu())
    return {v: torch.cat(ps).numpy() for v, ps in out.items()}


def predict(stepper: Stepper, loader, flips: list[str] | None = None, model=None) -> np.ndarray:
    """Softmax probabilities, averaged over the plain view and test-time flips (e.g. ["hflip"])."""
    views = [None] + list(flips or [])
    probs = predict_views(stepper, loader, views, model=model)
    return sum(probs[v] for v in views) / len(views)


def validate(stepper: Stepper, loader, labels: np.ndarray, model=None) -> dict:
    probs = predict(stepper, loader, model=model)
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return {"val_loss": float(-np.log(p).mean()), "probs": probs}
