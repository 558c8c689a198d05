"""k-fold fine-tuning of a timm model on a prepared competition.

    kagglecv train --comp digits-demo --config configs/demo.yaml epochs=10 lr=auto

Reads data/<comp>/folds.csv and the class folders; writes runs/<comp>/<run-id>/ with the resolved
config, lr_find.png/json, metrics.csv (one row per epoch), fold<k>.pt (best epoch's weights plus the
JSON needed to rebuild the model), oof.csv and, last of all, summary.json.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from rich.table import Table

from .competition import Competition
from .config import TrainConfig
from .console import console, progress
from .data import ImageDataset, default_workers, make_loader, preload, train_transform
from .engine import Stepper, pick_device, train_one_epoch, validate
from .errors import UserError
from .layout import FOLDS, read_prepared
from .lr_find import lr_find, save_lr_find
from .metrics import HIGHER_IS_BETTER, is_better, score
from .model import create_model, resolve_input

RUNS_DIR = Path("runs")
SUMMARY = "summary.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_run_dir(comp: Competition, cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.model)
    run_dir = RUNS_DIR / comp.slug / f"{stamp}-{name}"
    i = 1
    while run_dir.exists():  # two runs in the same second
        i += 1
        run_dir = RUNS_DIR / comp.slug / f"{stamp}-{name}-{i}"
    run_dir.mkdir(parents=True)
    return run_dir


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temp name and rename, so a killed run never leaves a file that looks complete."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def save_checkpoint(path: Path, state_dict: dict, meta: dict) -> None:
    # tensors + a JSON string: loads with weights_only=True, no pickled code
    atomic_write_bytes(path, lambda p: torch.save({"state_dict": state_dict, "meta": json.dumps(meta)}, p))


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return ckpt["state_dict"], json.loads(ckpt["meta"])
    except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}); retrain this run") from None


class TrainData:
    """Everything about the training images that does not change between folds."""

    def __init__(self, comp: Competition, cfg: TrainConfig, size: int):
        root = comp.data_dir
        info = read_prepared(comp)
        folds_path = root / FOLDS
        self.folds = pd.read_csv(folds_path)
        self.classes: list[str] = [str(c) for c in info["classes"]]
        labels = self.folds["label"].astype(str)
        unknown = set(labels) - set(self.classes)
        if unknown:
            raise UserError(
                f"{folds_path}: labels {sorted(unknown)[:5]} are not class folders; rerun `make data --force`"
            )
        self.labels = labels.map({c: i for i, c in enumerate(self.classes)}).to_numpy()
        paths = [root / p for p in self.folds["image"]]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise UserError(
                f"{len(missing)} images in {folds_path} are missing (e.g. {missing[0]}); rerun `make data --force`"
            )
        images = preload(paths, size, cfg.cache_mb, "decoding train images")
        self.dataset = ImageDataset(paths, self.labels, size, images)
        self.workers = default_workers(cfg, images is not None)
        self.n_folds = int(self.folds["fold"].nunique())


def setup_fold(comp, cfg, data: TrainData, inp: dict, device, tr_idx, va_idx, fold: int):
    """A fresh model, optimizer and loaders for one fold."""
    model = create_model(
        cfg.model, len(data.classes), cfg.pretrained, cfg.pretrained_file, cfg.in_chans, cfg.drop_rate
    )
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=cfg.weight_decay)
    stepper = Stepper(model, opt, device, inp["mean"], inp["std"], cfg.amp, cfg.label_smoothing)
    pin = device.type == "cuda"
    train_ds = data.dataset.subset(tr_idx, train_transform(cfg, comp.hflip, comp.vflip, cfg.seed + fold))
    train_dl = make_loader(train_ds, cfg.batch_size, True, data.workers, cfg.seed + fold, pin)
    val_dl = make_loader(data.dataset.subset(va_idx), cfg.batch_size * 2, False, data.workers, 0, pin)
    return stepper, train_dl, val_dl


def run_lr_find(comp, cfg, data: TrainData, stepper: Stepper, tr_idx, out_dir: Path) -> float:
    """The LR range test on a training split; leaves the stepper as it found it."""
    lr_ds = data.dataset.subset(tr_idx, train_transform(cfg, comp.hflip, comp.vflip, cfg.seed + 10_000))
    lr_dl = make_loader(
        lr_ds, cfg.batch_size, True, data.workers, cfg.seed + 10_000, stepper.device.type == "cuda"
    )
    result = lr_find(stepper, lr_dl, cfg.lr_find_start, cfg.lr_find_end, cfg.lr_find_iters)
    save_lr_find(result, out_dir)
    console.print(
        f"[bold]lr range test[/]: suggestion {result['suggestion']:.2e} (valley rule) -> {out_dir / 'lr_find.png'}"
    )
    return result["suggestion"]


def prepare_training(comp: Competition, cfg: TrainConfig):
    device = pick_device(cfg.device)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    read_prepared(comp)
    seed_everything(cfg.seed)
    probe = create_model(cfg.model, 2, pretrained=False, in_chans=cfg.in_chans)
    inp = resolve_input(probe, cfg.img_size, cfg.mean, cfg.std)
    return device, inp, TrainData(comp, cfg, inp["img_size"])


def lr_find_only(comp: Competition, cfg: TrainConfig) -> float:
    """`kagglecv lr-find`: the range test alone, on fold 0's training split."""
    device, inp, data = prepare_training(comp, cfg)
    out_dir = RUNS_DIR / comp.slug / f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    tr_idx = np.flatnonzero(data.folds["fold"].to_numpy() != 0)
    stepper, _, _ = setup_fold(comp, cfg, data, inp, device, tr_idx, tr_idx[:1], 0)
    return run_lr_find(comp, cfg, data, stepper, tr_idx, out_dir)


def train(comp: Competition, cfg: TrainConfig, run_dir: Path | None = None) -> Path:
    t0 = time.time()
    device, inp, data = prepare_training(comp, cfg)
    n_classes = len(data.classes)
    n_train_folds = min(cfg.folds, data.n_folds)

    run_dir = run_dir or new_run_dir(comp, cfg)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    console.print(
        f"[bold]run[/] {run_dir}  ·  {cfg.model} ({'pretrained' if cfg.pretrained else 'from scratch'}) "
        f"· {n_classes} classes · {len(data.labels)} images · {n_train_folds}/{data.n_folds} folds · "
        f"{cfg.epochs} epochs · {inp['img_size']}px · {device.type}"
    )

    lr = cfg.lr
    metrics_path = run_dir / "metrics.csv"
    oof_parts, fold_scores, best_epochs = [], [], []
    higher = HIGHER_IS_BETTER[comp.metric]
    for fold in range(n_train_folds):
        seed_everything(cfg.seed + fold)
        tr_idx = np.flatnonzero(data.folds["fold"].to_numpy() != fold)
        va_idx = np.flatnonzero(data.folds["fold"].to_numpy() == fold)
        stepper, train_dl, val_dl = setup_fold(comp, cfg, data, inp, device, tr_idx, va_idx, fold)
        opt = stepper.optimizer
        if lr == "auto":  # once per run, on fold 0's training split, with its own augmentation stream
            lr = run_lr_find(comp, cfg, data, stepper, tr_idx, run_dir)
        for group in opt.param_groups:
            group["lr"] = lr
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=cfg.epochs * len(train_dl), pct_start=cfg.pct_start
        )

        best, best_state, best_probs, best_epoch = None, None, None, -1
        with progress() as bar:
            fold_task = bar.add_task(f"fold {fold}", total=cfg.epochs, info="")
            batch_task = bar.add_task("  batches", total=len(train_dl), info="")
            for epoch in range(cfg.epochs):
                bar.reset(batch_task, total=len(train_dl))
                tr = train_one_epoch(
                    stepper,
                    train_dl,
                    sched,
                    on_batch=lambda loss, t=batch_task: bar.update(t, advance=1, info=f"loss {loss:.3f}"),
                )
                va = validate(stepper, val_dl, data.labels[va_idx])
                m = score(comp.metric, data.labels[va_idx], va["probs"])
                row = {
                    "fold": fold,
                    "epoch": epoch,
                    "lr": sched.get_last_lr()[0],
                    "train_loss": tr["train_loss"],
                    "val_loss": va["val_loss"],
                    "metric": m,
                }
                pd.DataFrame([row]).to_csv(
                    metrics_path, mode="a", header=not metrics_path.exists(), index=False
                )
                mark = ""
                if is_better(comp.metric, m, best):
                    best, best_epoch, best_probs = m, epoch, va["probs"]
                    best_state = {
                        k: v.detach().to("cpu", copy=True) for k, v in stepper.model.state_dict().items()
                    }
                    mark = " *"
                bar.update(fold_task, advance=1, info=f"best {comp.metric} {best:.4f}")
                console.print(
                    f"[dim]fold {fold} epoch {epoch:>2}  train_loss {tr['train_loss']:.4f}  val_loss {va['val_loss']:.4f}  "
                    f"{comp.metric} {m:.4f}{mark}[/]"
                )
        meta = {
            "competition": comp.slug,
            "model": cfg.model,
            "num_classes": n_classes,
            "classes": data.classes,
            "in_chans": cfg.in_chans,
            **inp,
            "fold": fold,
            "best_epoch": best_epoch,
            "metric": comp.metric,
            "score": best,
            "lr": lr,
            "config": cfg.to_dict(),
        }
        save_checkpoint(run_dir / f"fold{fold}.pt", best_state, meta)
        part = data.folds.iloc[va_idx][["image", "label", "fold"]].copy()
        probs = pd.DataFrame(best_probs, columns=[f"p_{c}" for c in data.classes], index=part.index)
        part = pd.concat([part, probs], axis=1)
        part["pred"] = [data.classes[i] for i in best_probs.argmax(1)]
        oof_parts.append(part)
        fold_scores.append(best)
        best_epochs.append(best_epoch)
        console.print(f"[green]fold {fold}[/]: best {comp.metric} {best:.4f} at epoch {best_epoch}")

    oof = pd.concat(oof_parts).sort_index()
    atomic_write_bytes(run_dir / "oof.csv", lambda p: oof.to_csv(p, index=False))
    oof_score = score(
        comp.metric, data.labels[oof.index.to_numpy()], oof[[f"p_{c}" for c in data.classes]].to_numpy()
    )
    summary = {
        "competition": comp.slug,
        "run": run_dir.name,
        "model": cfg.model,
        "folds": n_train_folds,
        "metric": comp.metric,
        "higher_is_better": higher,
        "cv_mean": float(np.mean(fold_scores)),
        "cv_std": float(np.std(fold_scores)),
        "fold_scores": [float(s) for s in fold_scores],
        "oof_score": oof_score,
        "best_epochs": best_epochs,
        "lr": lr,
        "img_size": inp["img_size"],
        "device": device.type,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_bytes(run_dir / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=2)))
    print_cv_table(summary)
    return run_dir


def print_cv_table(summary: dict) -> None:
    table = Table(title=f"{summary['competition']} · {summary['run']}", title_justify="left")
    table.add_column("fold", justify="right")
    table.add_column(summary["metric"], justify="right")
    table.add_column("best epoch", justify="right")
    for k, (s, e) in enumerate(zip(summary["fold_scores"], summary["best_epochs"], strict=True)):
        table.add_row(str(k), f"{s:.4f}", str(e))
    table.add_section()
    table.add_row("CV", f"[bold]{summary['cv_mean']:.4f} ± {summary['cv_std']:.4f}[/]", "")
    table.add_row("OOF", f"{summary['oof_score']:.4f}", "")
    console.print(table)
    console.print(f"trained in {summary['seconds']:.0f} s on {summary['device']}")
