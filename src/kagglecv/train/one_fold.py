"""One fold of a run, in named steps over a small context: start (or load the resume state), one
epoch, save the resume state, write the fold's outputs.

    train_fold(run, fold=2)   # called by train.train for every fold the run trains

With progressive resizing (img_sizes, progressive, final_size) the size is a function of the epoch
(config.stage_sizes): the loaders are rebuilt at each stage boundary, also when a resume lands in a
stage, and each epoch validates at its stage's size, so the best epoch may come from any stage.

Writes runs/<comp>/<run>/fold<k>.last.pt after every epoch (everything needed to resume: weights,
optimizer, scheduler, grad scaler, EMA, best so far, every RNG stream), and when the fold is done
fold<k>.pt (the best epoch's weights + the JSON to rebuild the model) and oof_fold<k>.csv.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kagglecv.core.checkpoint import CheckpointMeta, save_checkpoint
from kagglecv.core.competition import Competition
from kagglecv.core.config import TrainConfig, stage_sizes
from kagglecv.core.console import console, progress
from kagglecv.core.files import atomic_write
from kagglecv.core.metrics import is_better, score
from kagglecv.core.runs import write_rows
from kagglecv.core.state import get_rng_state, seed_everything, set_rng_state, to_cpu
from kagglecv.ml import batches, dist
from kagglecv.ml.augment import Augment
from kagglecv.ml.data import make_loader
from kagglecv.ml.engine import Stepper, steps_per_epoch, train_one_epoch, validate
from kagglecv.ml.model import ModelInput, create_model, place
from kagglecv.train.train_data import TrainData

# a fold's batches: a DataLoader over images decoded by workers, or whole in-RAM batches (batches.py)
Loader = torch.utils.data.DataLoader | batches.MemoryBatches


@dataclass
class RunContext:
    """What every fold of a run shares: the competition, recipe, data, input spec, device, LR."""

    comp: Competition
    cfg: TrainConfig
    data: TrainData
    inp: ModelInput
    device: torch.device
    run_dir: Path
    lr: float = 0.0
    rows: list[dict] = field(default_factory=list)  # metrics.csv, one row per epoch
    on_epoch: Callable[[dict], None] | None = None  # each epoch's row (tune/study.py reports it to the trial)


@dataclass
class Fold:
    """One fold under way: its split, stepper, loaders, the best epoch so far and where it resumes."""

    fold: int
    tr_idx: np.ndarray
    va_idx: np.ndarray
    stepper: Stepper
    train_dl: Loader
    val_dl: Loader
    best: float | None = None
    best_epoch: int = -1
    best_state: dict | None = None
    best_probs: np.ndarray | None = None
    size: int = 0  # the image size the loaders are built at
    start: int = 0  # the first epoch still to train
    resume: dict | None = None  # fold<k>.last.pt's contents until the optimizer and schedule are restored


def build_stepper(
    run: RunContext, fold: int, tr_idx, va_idx, ddp: bool = True, size: int | None = None
) -> tuple[Stepper, Loader, Loader]:
    """A fresh model, optimizer (layer-decayed param groups) and loaders for one split."""
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2

    cfg, data, device = run.cfg, run.data, run.device
    model = create_model(
        cfg.model,
        num_classes=len(data.classes),
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file,
        in_chans=cfg.in_chans,
        drop_rate=cfg.drop_rate,
    )
    place(model, device)
    # fused: one kernel for every parameter's update, not a Python loop over them (a small model's
    # optimizer step otherwise costs as much as a good part of its forward pass)
    opt = create_optimizer_v2(
        model, "adamw", lr=1e-3, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay, fused=True
    )
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=len(data.classes),
        )
    ddp = ddp and dist.world_size() > 1
    stepper = Stepper(
        model,
        optimizer=opt,
        device=device,
        mean=run.inp.mean,
        std=run.inp.std,
        amp=cfg.amp,
        amp_dtype_name=cfg.amp_dtype,
        label_smoothing=cfg.label_smoothing,
        accum=cfg.accum_steps,
        mixup=mixup,
        compile=cfg.compile,
        ddp=ddp,
    )
    return stepper, *fold_loaders(run, fold, tr_idx, va_idx, ddp, size or run.data.size)


def fold_loaders(run: RunContext, fold: int, tr_idx, va_idx, ddp: bool, size: int) -> tuple[Loader, Loader]:
    """The training loader (augmented; under DDP each rank its own shard) and the validation loader,
    at one image size."""
    cfg, comp = run.cfg, run.comp
    dataset, workers = run.data.at(size)
    pin = run.device.type == "cuda"
    augment = Augment.from_recipe(cfg, hflip=comp.hflip, vflip=comp.vflip)
    if batches.fits(dataset, workers, ddp):  # in RAM: whole batches, augmented at once
        kw = {"seed": cfg.seed + fold, "device": run.device}
        return (
            batches.memory_batches(
                dataset.subset(tr_idx), augment, batch_size=cfg.batch_size, shuffle=True, **kw
            ),
            batches.memory_batches(
                dataset.subset(va_idx), augment, batch_size=cfg.batch_size * 2, shuffle=False, **kw
            ),
        )
    train_ds = dataset.subset(tr_idx, augment.per_item(cfg.seed + fold))
    sampler = None
    if ddp:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, seed=cfg.seed + fold, drop_last=True)
    train_dl = make_loader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        workers=workers,
        seed=cfg.seed + fold,
        pin=pin,
        persistent=False,
        sampler=sampler,
    )
    val_dl = make_loader(
        dataset.subset(va_idx),
        batch_size=cfg.batch_size * 2,
        shuffle=False,
        workers=workers,
        pin=pin,
    )
    return train_dl, val_dl


# ---- the steps ------------------------------------------------------------------------------


def last_path(run_dir: Path, fold: int) -> Path:
    """fold<k>.last.pt: the fold's resume state, there only while the fold is unfinished."""
    return run_dir / f"fold{fold}.last.pt"


def start_fold(run: RunContext, fold: int) -> Fold:
    """A fresh fold, or the one fold<k>.last.pt describes (weights, EMA, scaler, best so far, RNG)."""
    seed_everything(run.cfg.seed + fold)
    folds = run.data.folds["fold"].to_numpy()
    tr_idx, va_idx = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    resume_file = last_path(run.run_dir, fold)
    st = None
    if dist.broadcast(resume_file.exists() if dist.is_main() else None):
        st = torch.load(resume_file, map_location="cpu", weights_only=True)
    sizes = epoch_sizes(run)
    size = sizes[min(st["epoch"] + 1, len(sizes) - 1)] if st else sizes[0]  # the stage it resumes in
    stepper, train_dl, val_dl = build_stepper(run, fold, tr_idx, va_idx, size=size)
    if run.cfg.ema:
        from timm.utils import ModelEmaV3

        stepper.ema = ModelEmaV3(stepper.model, decay=run.cfg.ema_decay)
    f = Fold(fold, tr_idx, va_idx, stepper, train_dl, val_dl, size=size)
    if st is not None:
        stepper.model.load_state_dict(st["model"])
        if st["scaler"]:  # empty when saved without fp16 (a CPU or bf16 run resumed on an fp16-only GPU)
            stepper.scaler.load_state_dict(st["scaler"])
        if stepper.ema is not None:
            stepper.ema.module.load_state_dict(st["ema"])
        f.best, f.best_epoch, f.best_state = st["best"], st["best_epoch"], st["best_state"]
        f.best_probs = st["best_probs"].numpy()
        f.start, f.resume = st["epoch"] + 1, st
        set_rng_state(st["rng"])
        console.print(f"[yellow]resuming fold {fold}[/] after epoch {st['epoch']} of {total_epochs(run.cfg)}")
    run.rows[:] = [r for r in run.rows if r["fold"] != fold or r["epoch"] < f.start]
    return f


def total_epochs(cfg) -> int:
    return cfg.freeze_epochs + cfg.epochs + (cfg.final_epochs if cfg.final_size else 0)


def epoch_sizes(run: RunContext) -> list[int]:
    """The training (and validation) size of each epoch of a fold."""
    return stage_sizes(run.cfg, run.inp.img_size)


def phases(cfg) -> list[tuple[str, int, int]]:
    """(name, first epoch, epochs): the head alone first (fastai's freeze) where asked, then everything,
    then the final_size stage with its own, lower, one-cycle. Each phase has one schedule across
    the progressive sizes in it (the steps per epoch do not depend on the size)."""
    out = [("head", 0, cfg.freeze_epochs)] if cfg.freeze_epochs > 0 else []
    out += [("all", cfg.freeze_epochs, cfg.epochs)]
    return out + ([("final", cfg.freeze_epochs + cfg.epochs, cfg.final_epochs)] if cfg.final_size else [])


def use_size(run: RunContext, f: Fold, size: int) -> None:
    """At a stage boundary, the loaders at the next size (its image cache built on first use)."""
    if size != f.size:
        f.train_dl, f.val_dl = fold_loaders(run, f.fold, f.tr_idx, f.va_idx, f.stepper.ddp, size)
        console.print(f"[dim]fold {f.fold}: image size {f.size}px -> {size}px[/]")
        f.size = size


def start_phase(run: RunContext, f: Fold, phase: str, first: int, n_epochs: int):
    """One one-cycle schedule per phase (it sets each group's LR). On resume the optimizer and,
    inside the phase it stopped in, the schedule continue from their saved state."""
    opt = f.stepper.optimizer
    n_steps = steps_per_epoch(len(f.train_dl), run.cfg.accum_steps)
    mult = run.cfg.final_lr_mult if phase == "final" else 1.0
    base_lrs = [run.lr * mult * g.get("lr_scale", 1.0) for g in opt.param_groups]

    def schedule():
        # a handful of steps in all (tiny data, several GPUs) left OneCycleLR a warm-up or an annealing
        # of zero steps, and it divided by zero: keep each at least one step and a half
        total = max(n_epochs * n_steps, 4)
        pct = min(max(run.cfg.pct_start, 1.5 / total), 1 - 1.5 / total)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=base_lrs, total_steps=total, pct_start=pct)

    st, f.resume = f.resume, None
    saved = (st or {}).get("scheduler")
    if st is not None and saved is not None and saved["phase"] == phase:
        sched = schedule()  # then the saved state overwrites what the new schedule set
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(saved["state"])
    else:
        if st is not None:
            opt.load_state_dict(st["optimizer"])  # the new phase's schedule then sets its own LRs
        sched = schedule()
        if st is not None and saved is None:  # a resume file from before schedules were saved: replay
            with warnings.catch_warnings():  # the schedule alone moves here, not the weights
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(max(0, f.start - first) * n_steps):
                    sched.step()
    f.stepper.set_phase(frozen=phase == "head")
    return sched


def run_epoch(run: RunContext, f: Fold, epoch: int, sched, on_batch) -> dict:
    """Train one epoch and validate it; returns the metrics.csv row (and remembers the best epoch)."""
    cfg, stepper, train_dl = run.cfg, f.stepper, f.train_dl
    # every epoch's shuffling and augmentation follow from (seed, fold, epoch) alone,
    # so a resumed run draws exactly what an uninterrupted one would have
    epoch_seed = cfg.seed * 1_000_003 + f.fold * 1009 + epoch
    # (under DDP the sampler shuffles; the generator seeds the loader's workers, per rank)
    rank_seed = epoch_seed + 7919 * dist.rank()
    train_dl.generator.manual_seed(rank_seed)
    train_dl.dataset.transform.set_random_seed(rank_seed % 2**32)
    if train_dl.sampler is not None and hasattr(train_dl.sampler, "set_epoch"):
        train_dl.sampler.set_epoch(epoch)
    tr = train_one_epoch(stepper, train_dl, sched, on_batch=on_batch)
    tr["train_loss"] = dist.mean_across_ranks(tr["train_loss"])
    eval_model = stepper.ema.module if stepper.ema is not None else stepper.model
    labels = run.data.labels[f.va_idx]
    va = validate(stepper, f.val_dl, labels, model=eval_model)
    m = score(run.comp.metric, labels, va["probs"])
    improved = is_better(run.comp.metric, m, f.best)
    if improved:
        f.best, f.best_epoch, f.best_probs = m, epoch, va["probs"]
        f.best_state = to_cpu(eval_model.state_dict())
    row = {
        "fold": f.fold,
        "epoch": epoch,
        "lr": sched.get_last_lr()[-1],
        "train_loss": tr["train_loss"],
        "val_loss": va["val_loss"],
        "metric": m,
        "img_size": f.size,
    }
    run.rows.append(row)
    return {**row, "improved": improved}


def save_resume_state(run: RunContext, f: Fold, epoch: int, phase: str, sched) -> None:
    """fold<k>.last.pt and metrics.csv after an epoch: a Ctrl-C or kill -9 loses at most this epoch."""
    stepper = f.stepper
    state = {
        "model": stepper.model.state_dict(),
        "optimizer": stepper.optimizer.state_dict(),
        "scheduler": {"phase": phase, "state": sched.state_dict()},
        "scaler": stepper.scaler.state_dict(),
        "best": f.best,
        "best_epoch": f.best_epoch,
        "best_state": f.best_state,
        "best_probs": torch.from_numpy(f.best_probs),
        "epoch": epoch,
        "rng": get_rng_state(),
    }
    if stepper.ema is not None:
        state["ema"] = stepper.ema.module.state_dict()
    if dist.is_main():
        atomic_write(last_path(run.run_dir, f.fold), lambda p: torch.save(state, p))
        write_rows(run.run_dir, run.rows, fold=f.fold)


def write_fold_outputs(run: RunContext, f: Fold) -> None:
    """fold<k>.pt (best weights + the JSON to rebuild the model) and oof_fold<k>.csv; then the resume
    file goes. Rank 0 writes; the others wait for it."""
    cfg, data = run.cfg, run.data
    meta = CheckpointMeta(
        competition=run.comp.slug,
        model=cfg.model,
        num_classes=len(data.classes),
        classes=list(data.classes),
        in_chans=cfg.in_chans,
        mean=run.inp.mean,
        std=run.inp.std,
        img_size=epoch_sizes(run)[f.best_epoch],  # the size its best epoch trained and validated at
        train_sizes=sorted(set(epoch_sizes(run))),
        test_size=cfg.test_size,  # prediction uses this size when set
        fold=f.fold,
        best_epoch=f.best_epoch,
        metric=run.comp.metric,
        score=f.best,
        lr=run.lr,
        ema=cfg.ema,
        config=cfg.to_dict(),
    )
    dist.barrier()
    if not dist.is_main():
        return
    save_checkpoint(run.run_dir / f"fold{f.fold}.pt", f.best_state, meta)
    part = data.folds.iloc[f.va_idx][["image", "label", "fold"]].copy()
    probs = pd.DataFrame(f.best_probs, columns=[f"p_{c}" for c in data.classes], index=part.index)
    part = pd.concat([part, probs], axis=1)
    part["pred"] = [data.classes[i] for i in f.best_probs.argmax(1)]
    atomic_write(
        run.run_dir / f"oof_fold{f.fold}.csv", lambda p: part.to_csv(p, index=True, index_label="row")
    )
    last_path(run.run_dir, f.fold).unlink(missing_ok=True)


def train_fold(run: RunContext, fold: int) -> float:
    """Train one fold (resuming from fold<k>.last.pt if present); returns its best score."""
    f = start_fold(run, fold)
    metric = run.comp.metric
    with progress() as bar:
        fold_task = bar.add_task(f"fold {fold}", total=total_epochs(run.cfg), completed=f.start, info="")
        batch_task = bar.add_task("  batches", total=len(f.train_dl), info="")

        def on_batch(loss):
            bar.update(batch_task, advance=1, **({} if loss is None else {"info": f"loss {loss:.3f}"}))

        for phase, first, n_epochs in phases(run.cfg):
            if f.start >= first + n_epochs:
                continue  # finished before the interruption
            sched = start_phase(run, f, phase, first, n_epochs)
            for epoch in range(max(f.start, first), first + n_epochs):
                use_size(run, f, epoch_sizes(run)[epoch])
                bar.reset(batch_task, total=len(f.train_dl))
                row = run_epoch(run, f, epoch, sched, on_batch)
                save_resume_state(run, f, epoch, phase, sched)
                if run.on_epoch is not None:
                    run.on_epoch(row)  # may raise (a pruned trial) once the epoch is saved
                bar.update(fold_task, advance=1, info=f"best {metric} {f.best:.4f}")
                console.print(
                    f"[dim]fold {fold} epoch {epoch:>2}{' (head)' if phase == 'head' else ''}  "
                    f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                    f"{metric} {row['metric']:.4f}{' *' if row['improved'] else ''}[/]"
                )
    write_fold_outputs(run, f)
    console.print(f"[green]fold {fold}[/]: best {metric} {f.best:.4f} at epoch {f.best_epoch}")
    return f.best
