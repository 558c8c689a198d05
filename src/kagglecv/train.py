"""k-fold fine-tuning of a timm model on a prepared competition.

    kagglecv train --comp digits-demo --config configs/demo.yaml epochs=10 lr=auto
    kagglecv train --resume                 # continue the latest unfinished run where it stopped
    kagglecv train --run exp1 --folds 0,1   # part of a run; another machine trains --folds 2,3,4

Reads data/<comp>/folds.csv and the class folders; writes runs/<comp>/<run-id>/ with the resolved
config, lr_find.png/json, metrics.csv (one row per epoch), fold<k>.pt (best epoch's weights plus the
JSON needed to rebuild the model) and oof_fold<k>.csv per finished fold, fold<k>.last.pt while a
fold is under way (everything needed to resume it), and, gathered from the finished folds, oof.csv
and summary.json.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from . import dist
from .competition import Competition
from .config import TrainConfig, config_from_dict
from .console import console, progress
from .data import ImageDataset, cached_images, default_workers, make_loader, train_transform
from .engine import Stepper, pick_device, steps_per_epoch, train_one_epoch, validate
from .errors import UserError
from .files import atomic_write
from .layout import FOLDS, read_folds, read_prepared
from .lr_find import get_rng_state, lr_find, save_lr_find, set_rng_state, to_cpu
from .metrics import is_better, score
from .model import create_model, place, resolve_input
from .runs import (
    RUNS_DIR,
    fold_done,
    gather,
    has_progress,
    latest_unfinished,
    new_run_dir,
    save_checkpoint,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainData:
    """Everything about the training images that does not change between folds."""

    def __init__(self, comp: Competition, cfg: TrainConfig, size: int, cuda: bool = False):
        root = comp.data_dir
        info = read_prepared(comp)
        self.folds = read_folds(comp, info)
        self.classes: list[str] = [str(c) for c in info["classes"]]
        self.labels = (
            self.folds["label"].astype(str).map({c: i for i, c in enumerate(self.classes)}).to_numpy()
        )
        paths = [root / p for p in self.folds["image"]]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise UserError(
                f"{len(missing)} images in {root / FOLDS} are missing (e.g. {missing[0]}); rerun `make data COMP={comp.slug} FORCE=1`"
            )
        paths, images = cached_images(paths, root, size, cfg.cache, cfg.cache_mb, "decoding train images")
        self.dataset = ImageDataset(paths, self.labels, size, images)
        self.workers = default_workers(cfg.workers, images is not None, cuda)
        self.n_folds = int(self.folds["fold"].nunique())


def setup_fold(comp, cfg, data: TrainData, inp: dict, device, tr_idx, va_idx, fold: int, ddp: bool = True):
    """A fresh model, optimizer (layer-decayed param groups) and loaders for one fold."""
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2

    model = create_model(
        cfg.model, len(data.classes), cfg.pretrained, cfg.pretrained_file, cfg.in_chans, cfg.drop_rate
    )
    place(model, device)
    opt = create_optimizer_v2(
        model, "adamw", lr=1e-3, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay
    )
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=len(data.classes),
        )
    net = torch.compile(model) if cfg.compile else model
    ddp = ddp and dist.world_size() > 1
    stepper = Stepper(
        model,
        opt,
        device,
        inp["mean"],
        inp["std"],
        cfg.amp,
        cfg.label_smoothing,
        cfg.amp_dtype,
        accum=cfg.accum_steps,
        mixup=mixup,
        net=net,
        ddp=ddp,
    )
    pin = device.type == "cuda"
    train_ds = data.dataset.subset(tr_idx, train_transform(cfg, comp.hflip, comp.vflip, cfg.seed + fold))
    sampler = None
    if ddp:  # each rank trains on its own shard of the fold
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, seed=cfg.seed + fold, drop_last=True)
    train_dl = make_loader(
        train_ds, cfg.batch_size, True, data.workers, cfg.seed + fold, pin, persistent=False, sampler=sampler
    )
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
    device = dist.init_from_env() or pick_device(cfg.device)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    read_prepared(comp)
    seed_everything(cfg.seed)
    # with the weights asked for: an offline hub or a bad pretrained_file stops us before a run folder exists
    probe = create_model(cfg.model, 2, cfg.pretrained, cfg.pretrained_file, cfg.in_chans)
    inp = resolve_input(probe, cfg.img_size, cfg.mean, cfg.std)
    with dist.local_main_first():  # one rank per machine builds the disk cache; the others reuse it
        data = TrainData(comp, cfg, inp["img_size"], cuda=device.type == "cuda")
    return device, inp, data


def find_lr(comp, cfg, data: TrainData, inp: dict, device, out_dir: Path) -> float:
    """The range test on fold 0's training split with a throwaway model: the same LR for every fold
    and every machine that trains part of the run, and no effect on any fold's own training."""
    seed_everything(cfg.seed)
    tr_idx = np.flatnonzero(data.folds["fold"].to_numpy() != 0)
    stepper, _, _ = setup_fold(comp, cfg, data, inp, device, tr_idx, tr_idx[:1], 0, ddp=False)
    return dist.broadcast(run_lr_find(comp, cfg, data, stepper, tr_idx, out_dir) if dist.is_main() else None)


def lr_find_only(comp: Competition, cfg: TrainConfig) -> float:
    """`kagglecv lr-find`: the range test alone."""
    device, inp, data = prepare_training(comp, cfg)
    out_dir = RUNS_DIR / comp.slug / "lr-find" / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    return find_lr(comp, cfg, data, inp, device, out_dir)


# ---- resumable state -------------------------------------------------------------------------


def _read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return pd.read_csv(path).to_dict("records") if path.exists() else []


def _write_rows(run_dir: Path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows, columns=["fold", "epoch", "lr", "train_loss", "val_loss", "metric"])
    df = df.sort_values(["fold", "epoch"], kind="stable")
    atomic_write(run_dir / "metrics.csv", lambda p: df.to_csv(p, index=False))


# ---- one fold ---------------------------------------------------------------------------------


def train_fold(
    comp, cfg, data: TrainData, inp: dict, device, fold: int, lr: float, run_dir: Path, rows: list[dict]
) -> float:
    """Train one fold (resuming from fold<k>.last.pt if present); returns its best score."""
    seed_everything(cfg.seed + fold)
    folds = data.folds["fold"].to_numpy()
    tr_idx, va_idx = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    stepper, train_dl, val_dl = setup_fold(comp, cfg, data, inp, device, tr_idx, va_idx, fold)
    model, opt = stepper.model, stepper.optimizer
    if cfg.ema:
        from timm.utils import ModelEmaV3

        stepper.ema = ModelEmaV3(model, decay=cfg.ema_decay)
    phases = [("head", cfg.freeze_epochs)] * (cfg.freeze_epochs > 0) + [("all", cfg.epochs)]
    total_epochs = cfg.freeze_epochs + cfg.epochs
    n_steps = steps_per_epoch(len(train_dl), cfg.accum_steps)
    base_lrs = [lr * g.get("lr_scale", 1.0) for g in opt.param_groups]

    best, best_state, best_probs, best_epoch, start = None, None, None, -1, 0
    last_path = run_dir / f"fold{fold}.last.pt"
    if dist.broadcast(last_path.exists() if dist.is_main() else None):
        st = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if st["scaler"]:  # empty when saved without fp16 (a CPU or bf16 run resumed on an fp16-only GPU)
            stepper.scaler.load_state_dict(st["scaler"])
        if stepper.ema is not None:
            stepper.ema.module.load_state_dict(st["ema"])
        best, best_epoch, best_state = st["best"], st["best_epoch"], st["best_state"]
        best_probs = st["best_probs"].numpy()
        start = st["epoch"] + 1
        set_rng_state(st["rng"])
        console.print(f"[yellow]resuming fold {fold}[/] after epoch {st['epoch']} of {total_epochs}")
    rows[:] = [r for r in rows if r["fold"] != fold or r["epoch"] < start]

    with progress() as bar:
        fold_task = bar.add_task(f"fold {fold}", total=total_epochs, completed=start, info="")
        batch_task = bar.add_task("  batches", total=len(train_dl), info="")
        epoch0 = 0
        for phase, n_epochs in phases:
            # one one-cycle schedule per phase (it sets each group's LR); on resume, replay the steps taken
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=base_lrs, total_steps=n_epochs * n_steps, pct_start=cfg.pct_start
            )
            stepper.set_phase(frozen=phase == "head")
            with warnings.catch_warnings():  # the schedule alone moves here, not the weights
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(max(0, min(start, epoch0 + n_epochs) - epoch0) * n_steps):
                    sched.step()
            for epoch in range(max(start, epoch0), epoch0 + n_epochs):
                # every epoch's shuffling and augmentation follow from (seed, fold, epoch) alone,
                # so a resumed run draws exactly what an uninterrupted one would have
                epoch_seed = cfg.seed * 1_000_003 + fold * 1009 + epoch
                # (under DDP the sampler shuffles; the generator seeds the loader's workers, per rank)
                rank_seed = epoch_seed + 7919 * dist.rank()
                train_dl.generator.manual_seed(rank_seed)
                train_dl.dataset.transform.set_random_seed(rank_seed % 2**32)
                if train_dl.sampler is not None and hasattr(train_dl.sampler, "set_epoch"):
                    train_dl.sampler.set_epoch(epoch)
                bar.reset(batch_task, total=len(train_dl))
                tr = train_one_epoch(
                    stepper,
                    train_dl,
                    sched,
                    on_batch=lambda loss, t=batch_task: bar.update(
                        t, advance=1, **({} if loss is None else {"info": f"loss {loss:.3f}"})
                    ),
                )
                tr["train_loss"] = dist.mean_across_ranks(tr["train_loss"])
                eval_model = stepper.ema.module if stepper.ema is not None else model
                va = validate(stepper, val_dl, data.labels[va_idx], model=eval_model)
                m = score(comp.metric, data.labels[va_idx], va["probs"])
                rows.append(
                    {
                        "fold": fold,
                        "epoch": epoch,
                        "lr": sched.get_last_lr()[-1],
                        "train_loss": tr["train_loss"],
                        "val_loss": va["val_loss"],
                        "metric": m,
                    }
                )
                mark = ""
                if is_better(comp.metric, m, best):
                    best, best_epoch, best_probs = m, epoch, va["probs"]
                    best_state = to_cpu(eval_model.state_dict())
                    mark = " *"
                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": stepper.scaler.state_dict(),
                    "best": best,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "best_probs": torch.from_numpy(best_probs),
                    "epoch": epoch,
                    "rng": get_rng_state(),
                }
                if stepper.ema is not None:
                    state["ema"] = stepper.ema.module.state_dict()
                if dist.is_main():
                    atomic_write(last_path, lambda p, st=state: torch.save(st, p))
                    _write_rows(run_dir, rows)
                bar.update(fold_task, advance=1, info=f"best {comp.metric} {best:.4f}")
                console.print(
                    f"[dim]fold {fold} epoch {epoch:>2}{' (head)' if phase == 'head' else ''}  "
                    f"train_loss {tr['train_loss']:.4f}  val_loss {va['val_loss']:.4f}  {comp.metric} {m:.4f}{mark}[/]"
                )
            epoch0 += n_epochs

    meta = {
        "competition": comp.slug,
        "model": cfg.model,
        "num_classes": len(data.classes),
        "classes": data.classes,
        "in_chans": cfg.in_chans,
        **inp,
        "fold": fold,
        "best_epoch": best_epoch,
        "metric": comp.metric,
        "score": best,
        "lr": lr,
        "ema": cfg.ema,
        "config": cfg.to_dict(),
    }
    dist.barrier()
    if not dist.is_main():
        return best
    save_checkpoint(run_dir / f"fold{fold}.pt", best_state, meta)
    part = data.folds.iloc[va_idx][["image", "label", "fold"]].copy()
    probs = pd.DataFrame(best_probs, columns=[f"p_{c}" for c in data.classes], index=part.index)
    part = pd.concat([part, probs], axis=1)
    part["pred"] = [data.classes[i] for i in best_probs.argmax(1)]
    atomic_write(run_dir / f"oof_fold{fold}.csv", lambda p: part.to_csv(p, index=True, index_label="row"))
    last_path.unlink(missing_ok=True)
    console.print(f"[green]fold {fold}[/]: best {comp.metric} {best:.4f} at epoch {best_epoch}")
    return best


# ---- a run: folds, then the summary gathered from whatever folds are finished -----------------


def train(
    comp: Competition,
    cfg: TrainConfig,
    run_dir: Path | None = None,
    fold_ids: list[int] | None = None,
    resume: bool = False,
) -> Path:
    t0 = time.time()
    if resume:
        run_dir = run_dir or latest_unfinished(comp.slug)
        cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        console.print(f"[yellow]resuming[/] {run_dir} with its saved config")
    device, inp, data = prepare_training(comp, cfg)
    n_classes = len(data.classes)
    plan = run_dir / "plan.json" if run_dir else None
    if fold_ids is None and plan is not None and plan.exists():
        fold_ids = json.loads(plan.read_text())["fold_ids"]
    if fold_ids is None:
        fold_ids = list(range(min(cfg.folds, data.n_folds)))
        if cfg.folds > data.n_folds:
            console.print(
                f"[yellow]note:[/] folds={cfg.folds} but folds.csv has {data.n_folds}: training all {data.n_folds}"
            )
    bad = [k for k in fold_ids if not 0 <= k < data.n_folds]
    if bad:
        raise UserError(f"folds {bad} do not exist: folds.csv has folds 0..{data.n_folds - 1}")

    if run_dir is None:
        run_dir = new_run_dir(comp.slug, cfg.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    started_here = not cfg_path.exists()
    if not started_here:
        # keys added to kagglecv since the run started take their defaults, as its resume does
        saved = config_from_dict(yaml.safe_load(cfg_path.read_text()) or {}).to_dict()
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in cfg.to_dict().items() if saved.get(k) != v]
        if changed:
            raise UserError(
                f"{run_dir} was started with another config ({'; '.join(changed[:4])}); "
                "use a new RUN name or the same recipe"
            )
    if dist.is_main():  # atomic: other ranks may be reading them right now
        atomic_write(cfg_path, lambda p: p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
        atomic_write(run_dir / "plan.json", lambda p: p.write_text(json.dumps({"fold_ids": fold_ids})))
    dist.barrier()
    console.print(
        f"[bold]run[/] {run_dir}  ·  {cfg.model} ({'pretrained' if cfg.pretrained else 'from scratch'}) "
        f"· {n_classes} classes · {len(data.labels)} images · folds {','.join(map(str, fold_ids))} of {data.n_folds} · "
        f"{cfg.freeze_epochs}+{cfg.epochs} epochs · {inp['img_size']}px · {device.type}"
    )

    try:
        # what is already on disk is decided by rank 0 and told to all, so every rank takes the same path
        if cfg.lr != "auto":
            lr = float(cfg.lr)
        else:
            lr_json = run_dir / "lr_find.json"  # resumed, or another part of this run found it
            found = dist.broadcast(
                json.loads(lr_json.read_text())["chosen"] if dist.is_main() and lr_json.exists() else None
            )
            lr = float(found) if found is not None else find_lr(comp, cfg, data, inp, device, run_dir)

        rows = _read_rows(run_dir)
        for fold in fold_ids:
            if dist.broadcast(fold_done(run_dir, fold) if dist.is_main() else None):
                console.print(f"fold {fold} already finished in {run_dir.name}")
                continue
            train_fold(comp, cfg, data, inp, device, fold, lr, run_dir, rows)

    except UserError:
        if started_here and dist.is_main() and not has_progress(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained: leave no stub for RESUME to pick
        raise

    dist.barrier()
    if not dist.is_main():
        return run_dir
    summary = gather(run_dir, comp, seconds=time.time() - t0, device=device.type)
    print_cv_table(run_dir, summary)
    return run_dir


def print_cv_table(run_dir: Path, summary: dict) -> None:
    from .report import cv_table, load_run  # one CV table for the terminal, the report and `report`

    console.print(cv_table(load_run(run_dir)))
    console.print(f"trained in {summary['seconds']:.0f} s on {summary['device']}")
