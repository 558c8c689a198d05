"""Throughput benchmark: is training limited by the model or by the data pipeline?

    kagglecv bench                       # CPU: resnet18 at 128 px on 2 cores
    kagglecv bench --models resnet50,convnext_tiny --img-size 224   # GPU: bf16, channels_last

Generates a synthetic dogs-vs-cats-sized image set (JPEGs around 500x375) once, then measures
images/s for (a) the model alone on synthetic tensors (forward + backward + step), (b) the data
pipeline alone as training builds it (from RAM with batch augmentation when the resized set fits
`cache_mb`, else the disk cache through workers), (c) full training steps, and reports
(c)/(a), (c)/(b) and (c)/min(a, b). Results go to the terminal and runs/bench/latest.json.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.table import Table

from kagglecv.core.config import load_config
from kagglecv.core.console import console, track
from kagglecv.ml.augment import Augment
from kagglecv.ml.data import ImageDataset, default_workers, make_loader, write_jpeg
from kagglecv.ml.engine import Stepper, pick_device
from kagglecv.ml.model import create_model, place

BENCH_DIR = Path("runs") / "bench"


def synthetic_images(root: Path, n: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs of dogs-vs-cats size (about 500x375): smooth colour fields, shapes and noise."""
    rng = np.random.default_rng(seed)
    paths = []
    todo = []
    for i in range(n):
        cls = ("cat", "dog")[i % 2]
        p = root / cls / f"{cls}.{i}.jpg"
        paths.append(p)
        if not p.exists():
            todo.append((p, i))
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    for p, _ in track(todo, f"writing {len(todo)} synthetic JPEGs"):
        h, w = int(rng.integers(300, 450)), int(rng.integers(400, 500))
        base = cv2.resize(
            rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC
        )
        for _ in range(8):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(
                base, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(10, 80)), c, -1
            )
        noise = rng.normal(0, 12, base.shape)
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        write_jpeg(p, img, quality=90)
    return paths


def _timed(fn, n_items: int, warmup: int, iters: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return n_items * iters / (time.perf_counter() - t)


def training_loader(cfg, paths, data_root: Path, img_size: int, batch: int, workers: int | None, device):
    """The loader `make train` would build for these images (cache=auto), and its name."""
    from kagglecv.ml import batches as memory
    from kagglecv.ml.data import cached_images

    cached, images = cached_images(paths, data_root, img_size, cfg.cache, cfg.cache_mb, "decoding")
    labels = np.arange(len(cached)) % 2
    workers = default_workers(workers, images is not None, device.type == "cuda")
    augment = Augment.from_recipe(cfg, hflip=True, vflip=False)
    ds = ImageDataset(cached, labels, img_size, images, transform=augment.per_item(0))
    if memory.fits(ds, workers, ddp=False):
        kw = {"seed": 0, "device": device}
        return memory.memory_batches(ds, augment, batch_size=batch, shuffle=True, **kw), "RAM, batch aug"
    loader = make_loader(ds, batch_size=batch, shuffle=True, workers=workers, pin=device.type == "cuda")
    return loader, f"{'RAM' if images is not None else 'disk cache'}, {workers} workers"


def _drain(loader, need: int, consume) -> None:
    """`need` batches from `loader` (several passes where it is shorter), each handed to `consume`."""
    done = 0
    while done < need:
        for xb, yb in loader:
            consume(xb, yb)
            done += 1
            if done >= need:
                break


def _timed_drain(loader, need: int, batch: int, consume, sync) -> float:
    """Images per second through `consume`, after one warm-up pass (persistent workers, page cache)."""
    _drain(loader, need, consume)
    sync()
    t = time.perf_counter()
    _drain(loader, need, consume)
    sync()
    return need * batch / (time.perf_counter() - t)


def bench_model(
    model_name: str,
    img_size: int,
    batch: int,
    workers: int,
    paths: list[Path],
    data_root: Path,
    batches: int,
    amp: bool,
    compile_: bool,
) -> dict:
    device = pick_device("auto")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = load_config(None, [f"model={model_name}", "pretrained=false", f"img_size={img_size}"])
    model = place(create_model(model_name, num_classes=2), device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as training builds it
    stepper = Stepper(model, optimizer=opt, device=device, mean=[0.5] * 3, std=[0.25] * 3, amp=amp,
                      label_smoothing=0.1, compile=compile_)  # fmt: skip
    model.train()

    # (a) the model alone: one fixed uint8 batch, already in memory
    x = torch.randint(0, 255, (batch, 3, img_size, img_size), dtype=torch.uint8)
    y = torch.randint(0, 2, (batch,))
    if device.type == "cuda":
        x = x.pin_memory()
    a = _timed(lambda: stepper.step(x, y), batch, 3, batches, sync)

    # (b) the data pipeline alone, the way training reads these images: from RAM when they fit
    # cache_mb (whole batches augmented at once), else from the resized disk cache through workers
    loader, path = training_loader(cfg, paths, data_root, img_size, batch, workers, device)
    b = _timed_drain(loader, batches + 2, batch, lambda xb, yb: None, sync)
    # (c) full training steps: data pipeline feeding the model
    c = _timed_drain(loader, batches + 2, batch, lambda xb, yb: stepper.step(xb, yb), sync)
    return {
        "model": model_name,
        "img_size": img_size,
        "batch": batch,
        "workers": workers,
        "data_path": path,
        "device": device.type,
        "model_only": a,
        "data_only": b,
        "full": c,
        "full_vs_model": c / a,
        "full_vs_data": c / b,
        "full_vs_min": c / min(a, b),
    }


def run_bench(
    models: list[str],
    img_size: int,
    batch: int,
    n_images: int,
    batches: int,
    workers: int | None,
    amp: bool = True,
    compile_: bool = False,
) -> dict:
    device = pick_device("auto")
    data_root = BENCH_DIR / "data"
    paths = synthetic_images(data_root / "train", n_images)
    results = []
    for name in models:
        console.print(f"benchmarking {name} at {img_size}px, batch {batch} on {device.type}")
        results.append(bench_model(name, img_size, batch, workers, paths, data_root, batches, amp, compile_))
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    out = {
        "device": card,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results,
    }
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "latest.json").write_text(json.dumps(out, indent=2))

    table = Table(title=f"kagglecv bench · {card} · images/s", title_justify="left")
    for col in (
        "model",
        "px",
        "data path",
        "(a) model",
        "(b) data",
        "(c) full",
        "(c)/(a)",
        "(c)/(b)",
        "(c)/min",
    ):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["model"],
            str(r["img_size"]),
            r["data_path"],
            f"{r['model_only']:.0f}",
            f"{r['data_only']:.0f}",
            f"{r['full']:.0f}",
            f"{r['full_vs_model']:.2f}",
            f"{r['full_vs_data']:.2f}",
            f"[bold]{r['full_vs_min']:.2f}[/]",
        )
    console.print(table)
    console.print(f"-> {BENCH_DIR / 'latest.json'}")
    return out
