"""LR range test: ramp the learning rate exponentially over ~100 steps until the loss diverges, then
put everything back. Run alone with

    kagglecv lr-find [--comp digits-demo] [--config configs/demo.yaml]

Afterwards the model, optimizer, grad scaler and every RNG are exactly as before, so training after
`lr: auto` gives the same weights as training with that LR typed in.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import torch

from .console import progress


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


def to_cpu(obj):
    """A deep copy with every tensor on the CPU (load_state_dict moves them back)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def smooth_centered(values: list[float], window: int = 9) -> list[float]:
    """Centred moving average: unlike an EMA it does not lag, so the curve's features stay at their LR."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 3:
        return v.tolist()
    w = min(window, len(v) - (1 - len(v) % 2))
    pad = w // 2
    padded = np.pad(v, pad, mode="edge")
    return np.convolve(padded, np.ones(w) / w, mode="valid").tolist()


def valley(lrs: list[float], losses: list[float]) -> float:
    """The middle (in log-LR) of the valley: from where the loss starts to fall to its lowest point.

    The fall starts at the last point, before the minimum, still within 10% of the total drop of the
    starting plateau; halfway to the minimum the loss falls fast yet is far from diverging.
    """
    s = np.asarray(losses)
    end = int(np.argmin(s))
    plateau = float(np.median(s[: max(3, len(s) // 10)]))
    drop = plateau - s[end]
    if end < 2 or drop <= 0:
        return float(lrs[max(end, 0)] / 10)
    above = np.flatnonzero(s[:end] >= plateau - 0.1 * drop)
    start = int(above[-1]) if len(above) else 0
    return float(lrs[(start + end) // 2])


def lr_find(
    stepper,
    loader,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    iters: int = 100,
    diverge: float = 4.0,
    beta: float = 0.9,
) -> dict:
    """Exponential LR ramp until the (EMA-smoothed) loss exceeds `diverge` x its best.

    Returns {lrs, losses (centred-smoothed), raw_losses, suggestion}, cut where it diverged.
    """
    model, opt = stepper.model, stepper.optimizer
    saved = (  # on the CPU: a second copy of a big model and its optimizer may not fit on the GPU
        to_cpu(model.state_dict()),
        to_cpu(opt.state_dict()),
        copy.deepcopy(stepper.scaler.state_dict()),
        get_rng_state(),
    )
    accum, stepper.accum = stepper.accum, 1  # the range test steps on every batch
    lrs, smooth, raw = [], [], []
    avg, best = 0.0, math.inf
    stepper.train_mode()
    try:
        with progress() as bar:
            task = bar.add_task("lr range test", total=iters, info="")
            batches = iter(loader)
            for i in range(iters):
                try:
                    x, y = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    x, y = next(batches)
                lr = start_lr * (end_lr / start_lr) ** (i / max(iters - 1, 1))
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = stepper.step(x, y)[0].item()
                avg = beta * avg + (1 - beta) * loss
                s = avg / (1 - beta ** (i + 1))  # bias-corrected, so early points are not pulled to 0
                lrs.append(lr)
                raw.append(loss)
                smooth.append(s)
                bar.update(task, advance=1, info=f"lr {lr:.1e} loss {s:.3f}")
                if not math.isfinite(s) or (i > 5 and s > diverge * best):
                    break
                best = min(best, s)
    finally:
        stepper.accum = accum
        model.load_state_dict(saved[0])
        opt.load_state_dict(saved[1])
        stepper.scaler.load_state_dict(saved[2])
        set_rng_state(saved[3])
    # judge only the part before divergence, on a curve smoothed without lag
    stop = len(smooth)
    while stop > 1 and (not math.isfinite(smooth[stop - 1]) or smooth[stop - 1] > diverge * best):
        stop -= 1
    centred = smooth_centered(raw[:stop])
    suggestion = valley(lrs[:stop], centred) if stop > 2 else lrs[0]
    return {"lrs": lrs[:stop], "losses": centred, "raw_losses": raw[:stop], "suggestion": suggestion}


def save_lr_find(result: dict, out_dir: Path, chosen: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lr_find.json").write_text(
        json.dumps({**result, "chosen": chosen or result["suggestion"]}, indent=1)
    )
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(result["lrs"], result["raw_losses"], color="0.8", lw=1, label="loss")
    ax.plot(result["lrs"], result["losses"], color="C0", lw=2, label="smoothed loss")
    ax.axvline(result["suggestion"], color="C3", ls="--", label=f"suggestion {result['suggestion']:.2e}")
    ax.set_xscale("log")
    finite = [v for v in result["losses"] if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * finite[0]) * 1.1)
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "lr_find.png")
    plt.close(fig)
