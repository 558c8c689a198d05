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
from pathlib import Path

import numpy as np

from kagglecv.core.console import progress
from kagglecv.core.files import atomic_write
from kagglecv.core.state import get_rng_state, set_rng_state, to_cpu


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


def range_test(
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


def save_range_test(result: dict, out_dir: Path, chosen: float | None = None) -> None:
    """lr_find.json (what resume reads back) and lr_find.png, the same figure the report shows."""
    from kagglecv.core.figures import fig_lr_find, png

    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**result, "chosen": chosen or result["suggestion"]}, indent=1)
    # atomic: a resumed run reads "chosen" from it, so a half-written file must never exist
    atomic_write(out_dir / "lr_find.json", lambda p: p.write_text(text))
    data = png(fig_lr_find(result, chosen))
    atomic_write(out_dir / "lr_find.png", lambda p: p.write_bytes(data))
