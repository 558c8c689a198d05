"""The memory guard: before the first fold, will one training step of this model, size and batch fit?

    batch = fit_batch(cfg, num_classes=10, n_images=1797, n_train=1437, size=224, device=device)

On a GPU it runs real probe steps (forward, backward and AdamW step at the largest training size with
the real batch), halving the batch until one fits, like Lightning's batch-size finder. On the CPU it
estimates instead, against MemAvailable: the bytes autograd saves for backward in one forward of a
batch of 2 at a small size (hooks on the saved tensors, weights left out), scaled linearly in the
batch and with the image area, x ACT_SLACK for what backward allocates on top; plus weights,
gradients and AdamW's two moments; plus the training images when they are held in RAM (twice: a
fold's train and validation subsets copy them); plus LOOP_BYTES for the rest of the loop.
`batch_size: auto` takes the largest batch that fits (up to a cap); a fixed batch that does not fit
stops the run before its folder exists, with one line that says what would fit.
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import dataclass

import torch

from kagglecv.core.errors import UserError
from kagglecv.core.files import human_bytes
from kagglecv.core.state import get_rng_state, set_rng_state

# peak RSS of a real step / the estimate's saved-for-backward bytes, measured on a 2-core CPU at
# batch 16-64: test_resnet 128px 1.7, resnet18 128px 1.6, resnet50 160px 1.3 (the larger, the safer)
ACT_SLACK = 1.7
# what a CPU training holds beyond its step and images (loaders, eval batches, allocator slack): a
# real run's peak RSS minus its import-time RSS, less the parts above (test_resnet and resnet18, 128px)
LOOP_BYTES = 150 * 2**20
HEADROOM = 0.85  # the share of free memory one step may take: the rest is for the loaders, eval, noise
PROBE_SIZE = 64  # the CPU measures at this size (or the model's fixed one) and scales with the area
AUTO_START = {"cuda": 512, "cpu": 64}  # where batch_size: auto starts halving (more is no faster on a CPU)


@dataclass
class StepCost:
    """Bytes of one training step: `fixed` whatever the batch, plus `per_image` for each image."""

    fixed: float
    per_image: float
    cache: float = 0.0  # the part of `fixed` that is the training images held in RAM

    def at(self, batch: int) -> float:
        return self.fixed + batch * self.per_image

    def largest(self, budget: float) -> int:
        return max(0, int((budget - self.fixed) // self.per_image))


def available_ram() -> int:
    """MemAvailable (what the kernel can hand out without swapping), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # macOS, Windows

    return int(psutil.virtual_memory().available)


def saved_per_image(model: torch.nn.Module, size: int, in_chans: int) -> float:
    """Bytes autograd keeps for backward per image at `size`: measured at PROBE_SIZE and scaled with
    the area, or at `size` itself for a model that only takes its own size (a ViT)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:  # views of one tensor share a storage: count it once
            seen[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    for s0 in dict.fromkeys((min(size, PROBE_SIZE), size)):
        seen.clear()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(torch.rand(2, in_chans, s0, s0))
        except (RuntimeError, AssertionError, ValueError) as e:
            if s0 == size:
                raise UserError(f"the model cannot take {size}px images ({str(e)[:160]})") from None
            continue
        return sum(seen.values()) / 2 * (size / s0) ** 2
    raise AssertionError("unreachable")


def cpu_cost(cfg, model: torch.nn.Module, size: int, n_images: int) -> StepCost:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    copies = 4 + int(cfg.ema)  # weights, gradients, AdamW's two moments (+ the EMA's copy)
    image = size * size * cfg.in_chans
    in_ram = cfg.cache == "memory" or (cfg.cache == "auto" and n_images * image <= cfg.cache_mb * 2**20)
    cache = n_images * image if in_ram else 0
    # the uint8 batch, its float copy and the normalised input
    per_image = ACT_SLACK * saved_per_image(model, size, cfg.in_chans) + image * 9
    return StepCost(copies * weights + 2 * cache + LOOP_BYTES, per_image, 2 * cache)


def gpu_step_fits(cfg, model: torch.nn.Module, size: int, batch: int, num_classes: int, device) -> bool:
    """One real training step at this batch and size: True when it ran within HEADROOM of the GPU
    memory that was free before it."""
    from timm.optim import create_optimizer_v2

    from kagglecv.ml.engine import Stepper

    gc.collect()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_reserved(device)
    opt = create_optimizer_v2(model, "adamw", lr=1e-6, weight_decay=0.0)
    c = cfg.in_chans
    stepper = Stepper(
        model,
        optimizer=opt,
        device=device,
        mean=[0.5] * c,
        std=[0.5] * c,
        amp=cfg.amp,
        amp_dtype_name=cfg.amp_dtype,
    )
    x = torch.randint(0, 256, (batch, c, size, size), dtype=torch.uint8)
    y = torch.randint(0, num_classes, (batch,))
    ok = True
    try:
        stepper.train_mode()
        stepper.step(x, y, last=True)
        torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError:
        ok = False
    peak = torch.cuda.max_memory_reserved(device) - before
    opt.zero_grad(set_to_none=True)
    del stepper, opt, x, y
    gc.collect()
    torch.cuda.empty_cache()
    return ok and peak <= HEADROOM * free


def _pow2_floor(n: int) -> int:
    return 2 ** int(math.log2(n)) if n >= 1 else 0


def auto_cap(device_type: str, n_train: int) -> int:
    """Where `batch_size: auto` starts: AUTO_START, and at most an eighth of the training split (a
    power of 2), so that an epoch has 8 steps or more."""
    return min(AUTO_START[device_type], max(1, _pow2_floor(n_train // 8)))


def auto_line(batch: int, n_train: int, size: int, device) -> str:
    """What `batch_size: auto` chose, and why: a cap is not the largest batch that fits."""
    cap = auto_cap(device.type, n_train)
    where = f"at {size}px on {device.type}"
    if batch < cap:
        return f"{batch} fits {where} (the largest power of 2 that does, below the cap of {cap})"
    why = (
        f"the most auto tries on {device.type}"
        if cap == AUTO_START[device.type]
        else f"an eighth of the {n_train} training images, for 8 steps an epoch or more"
    )
    return f"{batch} (the cap: {why}) fits {where}; larger batches were not tried"


def fit_batch(cfg, *, num_classes: int, n_images: int, n_train: int, size: int, device) -> int:
    """The batch size to train with: the recipe's when it fits, the largest that fits for
    `batch_size: auto` (never above AUTO_START, nor above an eighth of the training split). Raises
    UserError, saying what would fit, when nothing does. Leaves every RNG stream as it found it."""
    from kagglecv.ml.model import create_model, place

    auto = cfg.batch_size == "auto"
    want = auto_cap(device.type, n_train) if auto else cfg.batch_size
    rng = get_rng_state()
    try:
        model = create_model(
            cfg.model, num_classes=num_classes, in_chans=cfg.in_chans, drop_rate=cfg.drop_rate
        )
        if device.type == "cuda":
            place(model, device)
            fits, batch = 0, want
            while batch >= 1 and not fits:
                fits = batch if gpu_step_fits(cfg, model, size, batch, num_classes, device) else 0
                batch //= 2
            cost, budget = None, None
        else:
            cost = cpu_cost(cfg, model, size, n_images)
            budget = HEADROOM * available_ram() / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            fits = cost.largest(budget)
        del model
    finally:
        set_rng_state(rng)
    if fits >= want:
        return want
    if auto and fits >= 1:
        return _pow2_floor(fits)
    raise UserError(refusal(cfg, size, want, fits, cost, budget, device))


def refusal(cfg, size: int, want: int, fits: int, cost: StepCost | None, budget, device) -> str:
    """One line: what does not fit, and what would."""
    where = "GPU memory" if device.type == "cuda" else "free RAM"
    need = (
        f"needs about {human_bytes(cost.at(want))} of {human_bytes(budget)} usable {where}"
        if cost
        else (f"does not fit in the {where} (a probe step ran out)")
    )
    head = f"memory guard: {cfg.model} at {size}px with batch_size={want} {need}"
    if fits < 1:
        ram = f"; cache=disk frees {human_bytes(cost.cache)}" if cost is not None and cost.cache else ""
        return f"{head}: even batch_size=1 does not fit; lower img_size{ram}"
    fit = min(_pow2_floor(fits), want)
    effective = want * cfg.accum_steps
    return (
        f"{head}: batch_size={fit} fits (batch_size={fit} accum_steps={-(-effective // fit)} keeps the "
        f"effective batch of {effective})"
    )
