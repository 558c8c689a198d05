"""k-fold fine-tuning of a timm model on a prepared competition: the run around the folds.

    kagglecv train --comp digits-demo --config configs/demo.yaml epochs=10 lr=auto
    kagglecv train --resume                 # continue the latest unfinished run where it stopped
    kagglecv train --run exp1 --folds 0,1   # part of a run; another machine trains --folds 2,3,4
    kagglecv train --run exp1 --resume      # every fold finished (some copied in): gather them
    kagglecv train --run exp1               # on every machine sharing runs/: they split the folds
    kagglecv train --gpus 4 --parallel folds   # 4 folds at once, one process per GPU

Every process that trains a run holds runs/<comp>/<run>/.lock shared and claims each fold with an
flock on fold<k>.lock while it trains it, so any number of trainers of one RUN= (PARALLEL=folds
workers, other machines) split its folds without a FOLDS= list; the one that finds every fold
finished gathers. A trainer that finds nothing left to claim refuses in one line.

Reads data/<comp>/folds.csv and the class folders (holding data/<comp>/ shared and the run folder to
itself); writes runs/<comp>/<run-id>/ with the resolved config, plan.json (the fold ids), lr_find.png/
json, metrics.csv, the folds' files (one_fold.py) and, gathered from the finished folds, oof.csv and
summary.json.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from kagglecv.core import locks
from kagglecv.core.competition import Competition
from kagglecv.core.config import TrainConfig, check_final_size, config_from_dict, stage_sizes
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.runs import (
    RUNS_DIR,
    finished_folds,
    gather,
    has_progress,
    is_gathered,
    latest_unfinished,
    new_run_dir,
    read_rows,
)
from kagglecv.core.state import seed_everything
from kagglecv.ml import dist
from kagglecv.ml.augment import Augment
from kagglecv.ml.data import make_loader
from kagglecv.ml.engine import pick_device
from kagglecv.ml.model import ModelInput, create_model, resolve_input
from kagglecv.prepare.prepared import PreparedInfo
from kagglecv.train.claims import SETUP_LOCK, claimed_elsewhere, gather_if_last, train_claimed
from kagglecv.train.lr_find import range_test, save_range_test
from kagglecv.train.memory import auto_line, fit_batch
from kagglecv.train.one_fold import RunContext, build_stepper
from kagglecv.train.plan import all_folds, check_split, planned_folds, write_plan
from kagglecv.train.train_data import TrainData, read_data


def check_fold_ids(fold_ids: list[int], n_folds: int) -> None:
    bad = [k for k in fold_ids if not 0 <= k < n_folds]
    if bad:
        raise UserError(f"folds {bad} do not exist: folds.csv has folds 0..{n_folds - 1}")


def check_device(cfg: TrainConfig) -> None:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")


def preflight(comp: Competition, cfg: TrainConfig, fold_ids: list[int] | None, run_dir: Path) -> None:
    """Every check that can stop a training, done before torchrun starts its processes: the data is
    prepared, folds.csv is sound, has those folds and is the split the run started on, the weights
    can be found."""
    check_device(cfg)
    folds = read_data(comp)[1]
    if (run_dir / "config.yaml").exists() and not is_gathered(run_dir):
        check_split(run_dir, comp)
    if fold_ids is not None:
        check_fold_ids(fold_ids, int(folds["fold"].nunique()))
    probe_model(cfg)


def probe_model(cfg: TrainConfig) -> torch.nn.Module:
    # with the weights asked for: an offline hub or a bad pretrained_file stops us before a run folder exists
    return create_model(
        cfg.model,
        num_classes=2,
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file,
        in_chans=cfg.in_chans,
    )


def prepare_training(comp: Competition, cfg: TrainConfig):
    check_device(cfg)
    # a torchrun rank trains on its own GPU; otherwise the recipe's device (cpu stays cpu on a GPU machine)
    device = dist.init_from_env() or pick_device(cfg.device)
    info, folds = read_data(comp)  # once: read_folds checks folds.csv and says what it finds
    seed_everything(cfg.seed)
    inp = resolve_input(probe_model(cfg), cfg.img_size, cfg.mean, cfg.std)
    check_final_size(cfg, inp.img_size, "config")  # img_size: null is the model's own size
    sizes = stage_sizes(cfg, inp.img_size)
    guard_memory(comp, cfg, info, folds, max(sizes), device)
    with dist.local_main_first():  # one rank per machine builds the disk cache; the others reuse it
        data = TrainData(comp, cfg, sizes[0], cuda=device.type == "cuda", prepared=(info, folds))
    return device, inp, data


def guard_memory(
    comp: Competition, cfg: TrainConfig, info: PreparedInfo, folds: pd.DataFrame, size: int, device
) -> None:
    """Stop before any image is decoded or run folder made when a training step will not fit
    (memory.py); `batch_size: auto` becomes the batch that fits, saved so a resume trains the same."""
    folds = folds["fold"].to_numpy()
    n_train = int((folds != 0).sum())
    batch = dist.broadcast(  # one decision for every rank (rank 0 probes)
        fit_batch(
            cfg, num_classes=len(info.classes), n_images=len(folds), n_train=n_train, size=size, device=device
        )
        if dist.is_main()
        else None
    )
    if cfg.batch_size == "auto":
        console.print(f"[bold]batch_size auto[/]: {auto_line(batch, n_train, size, device)}")
        cfg.batch_size = batch  # in place: config.yaml records the number, and resume reads it


# ---- the LR range test: one LR for every fold of a run ---------------------------------------


def find_lr(run: RunContext) -> float:
    """The range test on fold 0's training split with a throwaway model: the same LR for every fold
    and every machine that trains part of the run, and no effect on any fold's own training.
    Rank 0 runs it, writes lr_find.png/json into the run folder and tells the others."""
    return float(dist.broadcast(_range_test(run) if dist.is_main() else None))


def _range_test(run: RunContext) -> float:
    """The range test itself, on this process alone: no collective call in it, so rank 0 may run it
    under a file lock that no other rank waits for."""
    cfg, comp = run.cfg, run.comp
    seed_everything(cfg.seed)
    tr_idx = np.flatnonzero(run.data.folds["fold"].to_numpy() != 0)
    stepper, _, _ = build_stepper(run, 0, tr_idx, tr_idx[:1], ddp=False)
    seed = cfg.seed + 10_000
    augment = Augment.from_recipe(cfg, hflip=comp.hflip, vflip=comp.vflip)
    lr_ds = run.data.dataset.subset(tr_idx, augment.per_item(seed))
    lr_dl = make_loader(
        lr_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        workers=run.data.workers,
        seed=seed,
        pin=run.device.type == "cuda",
    )
    result = range_test(stepper, lr_dl, cfg.lr_find_start, cfg.lr_find_end, cfg.lr_find_iters)
    save_range_test(result, run.run_dir)
    console.print(
        f"[bold]lr range test[/]: suggestion {result['suggestion']:.2e} (valley rule) -> {run.run_dir / 'lr_find.png'}"
    )
    return result["suggestion"]


def lr_find_command(comp: Competition, cfg: TrainConfig) -> float:
    """`kagglecv lr-find`: the range test alone, into runs/<comp>/lr-find/<time>/."""
    with locks.data_lock(comp.data_dir, exclusive=False, what="kagglecv lr-find"):
        device, inp, data = prepare_training(comp, cfg)
        out_dir = RUNS_DIR / comp.slug / "lr-find" / time.strftime("%Y%m%d-%H%M%S")
        out_dir.mkdir(parents=True, exist_ok=True)
        return find_lr(RunContext(comp, cfg, data, inp, device, out_dir))


def chosen_lr(run: RunContext) -> float:
    """The recipe's LR, the one this run's range test already found (resumed, or another part of
    the run), or a new range test's. Rank 0 alone takes the run's setup lock (one range test for
    every process that trains the run), decides under it, and tells the other ranks once it has let
    go: a collective call under a lock that another rank waits for would hang them all."""
    lr, lr_json = run.cfg.lr, run.run_dir / "lr_find.json"
    if dist.is_main():
        with locks.waiting(run.run_dir / SETUP_LOCK):
            if lr == "auto":
                lr = json.loads(lr_json.read_text())["chosen"] if lr_json.exists() else _range_test(run)
    return float(dist.broadcast(lr))


# ---- a run: locks, plan, folds, then the summary gathered from whatever folds are finished ------


def _lock(held: contextlib.ExitStack, comp: Competition, run_dir: Path | None, what: str) -> None:
    """data/<comp>/ shared (every rank reads it; None: the data lock is held already) or, on rank 0
    alone, the run folder shared with the other processes training its folds (each fold is then
    claimed on its own, `claims.train_claimed`). Every rank learns whether all got theirs, so a refusal
    stops all of them with the same line."""

    def take():
        if run_dir is None:
            held.enter_context(locks.data_lock(comp.data_dir, exclusive=False, what=what))
        elif dist.is_main():
            held.enter_context(locks.run_share(run_dir, what=what))

    dist.all_or_none(take)


def _start_run_folder(
    run_dir: Path, comp: Competition, cfg: TrainConfig, fold_ids: list[int], n_folds: int
) -> bool:
    """config.yaml + plan.json; a run folder started with another recipe or on another split
    refuses. True when new."""
    cfg_path = run_dir / "config.yaml"
    started_here = not cfg_path.exists()
    if not started_here:
        check_split(run_dir, comp)
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
        write_plan(run_dir, comp, fold_ids, n_folds)
    dist.barrier()
    return started_here


def train(
    comp: Competition,
    cfg: TrainConfig,
    run_dir: Path | None = None,
    fold_ids: list[int] | None = None,
    resume: bool = False,
    on_epoch=None,
) -> Path:
    """Train a run's folds (or what is left of them, claimed fold by fold with other processes that
    train the same run) and, when every fold is finished, gather its summary. Returns the run folder.
    `on_epoch(row)` sees every epoch's metrics.csv row (the tuner's pruning hook)."""
    t0 = time.time()
    dist.init_from_env()
    what = f"make train{' RESUME=1' if resume else ''}"
    with contextlib.ExitStack() as held:
        _lock(held, comp, None, what)
        if resume:
            run_dir = run_dir or latest_unfinished(comp.slug)
            cfg = _resumed_config(held, comp, run_dir, what)
            planned = planned_folds(run_dir, fold_ids)
            if planned is not None and set(planned) <= set(finished_folds(run_dir)):
                return _gather_only(run_dir, comp)
            check_split(run_dir, comp)
            console.print(f"[yellow]resuming[/] {run_dir} with its saved config")
        device, inp, data = prepare_training(comp, cfg)
        fold_ids = planned_folds(run_dir, fold_ids) or all_folds(cfg, data.n_folds)
        check_fold_ids(fold_ids, data.n_folds)
        if run_dir is None:
            run_dir = dist.broadcast(new_run_dir(comp.slug, cfg.model) if dist.is_main() else None)
        if not resume:  # a new folder, or a named run that other processes may be training too
            _lock(held, comp, run_dir, what)
        run_dir.mkdir(parents=True, exist_ok=True)
        started_here = _start_run_folder(run_dir, comp, cfg, fold_ids, data.n_folds)
        if data.pseudo is not None and dist.is_main():
            from kagglecv.train.pseudo import write_pseudo_record

            write_pseudo_record(run_dir, data.pseudo)
        _banner(run_dir, cfg, data, inp, device, fold_ids)
        run = RunContext(comp, cfg, data, inp, device, run_dir, on_epoch=on_epoch)
        try:
            run.lr = chosen_lr(run)
            run.rows = read_rows(run_dir)
            trained, busy = train_claimed(run, fold_ids, what)
        except (UserError, KeyboardInterrupt):  # Ctrl-C in the range test too
            stub = started_here and not has_progress(run_dir) and not claimed_elsewhere(run_dir)
            if stub and dist.is_main():  # nothing trained: leave no stub for RESUME to pick
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        dist.barrier()
        if dist.is_main():
            gather_if_last(run, fold_ids, trained, busy, seconds=time.time() - t0)
    return run_dir


def _resumed_config(held, comp: Competition, run_dir: Path, what: str) -> TrainConfig:
    """The run folder to continue, locked, and the config it was started with."""
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); nothing to resume there")
    _lock(held, comp, run_dir, what)
    return config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))


def _banner(
    run_dir: Path, cfg: TrainConfig, data: TrainData, inp: ModelInput, device, fold_ids: list[int]
) -> None:
    console.print(
        f"[bold]run[/] {run_dir}  ·  {cfg.model} ({'pretrained' if cfg.pretrained else 'from scratch'}) "
        f"· {len(data.classes)} classes · {len(data.labels)} images · folds {','.join(map(str, fold_ids))} "
        f"of {data.n_folds} · {cfg.freeze_epochs}+{cfg.epochs} epochs · {sizes_text(cfg, inp)} · "
        f"batch {cfg.batch_size} · {device.type}"
    )


def sizes_text(cfg: TrainConfig, inp: ModelInput) -> str:
    """'32px', or the stages: '16px x1 -> 24px x1 -> 32px x1' (+ the test size)."""
    sizes = stage_sizes(cfg, inp.img_size)
    stages = [f"{s}px" + (f" x{sizes.count(s)}" if len(set(sizes)) > 1 else "") for s in dict.fromkeys(sizes)]
    return " -> ".join(stages) + (f" (test {cfg.test_size}px)" if cfg.test_size else "")


def _gather_only(run_dir: Path, comp: Competition) -> Path:
    """RESUME of a run whose folds are all finished (some maybe trained elsewhere and copied in);
    one whose summary lists them all already is left as it is (finished_at says which run is latest)."""
    done = finished_folds(run_dir)
    if is_gathered(run_dir):
        console.print(
            f"run {run_dir.name} is already finished (folds {','.join(map(str, done))} in its summary.json): "
            "nothing to train or gather; left as it is"
        )
        return run_dir
    if dist.is_main():
        gather(run_dir, comp)
    console.print(
        f"every fold of run {run_dir.name} is finished ({','.join(map(str, done))}): nothing to train; "
        "gathered them into oof.csv and summary.json"
    )
    return run_dir
