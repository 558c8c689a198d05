"""`make tune`: an Optuna study over the recipe's `tune:` block, each trial a short real training.

    kagglecv tune -c digits-demo --config configs/tune-demo.yaml --budget 10m
    KAGGLECV_STORAGE=postgresql://user:pw@host/db kagglecv tune --trials 40   # every machine: one study

The search space is the recipe's `tune:` block, one line per recipe key (or `lr_mult`):

    tune:
      model: [test_resnet, resnet10t]   # strings, booleans, one value or 3+ values: a choice
      img_size: {choices: [24, 32]}     # a choice between two numbers must say so
      epochs: [5, 15]                   # two whole numbers: every integer between them
      lr_mult: [0.3, 3.0]               # two numbers, one with a dot: a float range, on a log
      label_smoothing: [0.0, 0.2]       #   scale when both are > 0 and high >= 10 x low, else uniform
      mixup: {low: 0.0, high: 0.4, log: false}   # the explicit form
      tune_folds: 1                     # settings (TuneSettings): folds per trial, pruning

Every value is checked against the recipe key's type when the recipe loads. `lr_mult` multiplies
the LR range test's suggestion, which is run once per (model, img_size, batch_size) and cached in
runs/<comp>/tune/lr/. A trial trains the first `tune_folds` folds through train.train (folds
claimed, resume state, everything real) into runs/<comp>/tune/<study>/trial-<n>/, reports every
epoch's validation score to Optuna and is stopped by its MedianPruner when it falls behind the
median of earlier trials at the same epoch. The study lives in runs/<comp>/tune.db (SQLite) or
--storage / $KAGGLECV_STORAGE (any database URL Optuna takes: several machines then work on one
study; the variable keeps a password out of `ps`, and a printed URL shows it as ***). Ctrl-C keeps
the finished trials; rerunning continues the study. The best trial becomes configs/tuned-<comp>.yaml
(the whole recipe, ready for `make train CONFIG=...`) and runs/<comp>/tune.html shows the study.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from kagglecv.core.config import (
    TrainConfig,
    build_config,
    build_spec,
    check_fields,
    key,
    read_yaml,
    renamed_keys,
)
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.tune.storage import STORAGE_ENV, masked_url, storage_errors

# the search space when the recipe has no tune: block
DEFAULT_SPACE = {"lr_mult": [0.3, 3.0], "label_smoothing": [0.0, 0.2], "mixup": [0.0, 0.4]}


@dataclass
class TuneSettings:
    tune_folds: int = key(1, "folds each trial trains (the first N of folds.csv)")
    warmup_epochs: int = key(2, "epochs every trial trains before the pruner may stop it")
    startup_trials: int = key(3, "trials that run unpruned before pruning starts")

    def __post_init__(self) -> None:
        if self.tune_folds < 1 or self.warmup_epochs < 0 or self.startup_trials < 0:
            raise UserError("tune: tune_folds must be 1 or more; warmup_epochs and startup_trials 0 or more")


@dataclass
class Param:
    """One dimension of the search space: a choice, an int range or a float range (log or not)."""

    name: str
    kind: str  # choice | int | float | fixed
    values: list = dataclasses.field(default_factory=list)
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def suggest(self, trial):
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.values)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.kind in ("choice", "fixed"):
            return f"{self.kind} {self.values}"
        return f"{self.kind} [{self.low}, {self.high}]{' log' if self.log else ''}"


def _param(name: str, spec: Any, where: str) -> Param:
    """A YAML spec as a Param (the rules are in the module docstring)."""
    if isinstance(spec, dict):
        extra = set(spec) - {"choices", "low", "high", "log"}
        if extra or not ("choices" in spec) ^ ({"low", "high"} <= set(spec)):
            raise UserError(f"{where}: '{name}' takes {{choices: [...]}} or {{low: a, high: b, log: bool}}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise UserError(f"{where}: '{name}' choices must be a non-empty list")
            return Param(name, "choice", list(spec["choices"]))
        low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
        is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
        return Param(name, "int" if is_int else "float", low=low, high=high, log=log)
    if not isinstance(spec, list):
        return Param(name, "fixed", [spec])
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in spec)
    if len(spec) == 2 and numbers:
        low, high = spec
        if all(isinstance(v, int) for v in spec):
            return Param(name, "int", low=low, high=high)
        return Param(name, "float", low=float(low), high=float(high), log=low > 0 and high >= 10 * low)
    if not spec:
        raise UserError(f"{where}: '{name}' has an empty list; give the values to try")
    return Param(name, "choice", list(spec))


def _check(p: Param, where: str) -> None:
    """Every value the parameter can take passes the recipe key's own type check."""
    if p.kind in ("int", "float") and not p.low < p.high:
        raise UserError(f"{where}: '{p.name}' range [{p.low}, {p.high}] needs low < high")
    if p.kind in ("int", "float") and p.log and p.low <= 0:
        raise UserError(f"{where}: '{p.name}' on a log scale needs low > 0, got {p.low}")
    if p.name == "lr_mult":
        bad = [v for v in (p.values or [p.low, p.high]) if not isinstance(v, int | float) or v <= 0]
        if bad:
            raise UserError(f"{where}: lr_mult multiplies the range test's LR: positive numbers, got {bad}")
        return
    for v in p.values or [p.low, p.high]:
        check_fields(TrainConfig, {p.name: v}, where, what="tune key")


def parse_space(block: dict | None, where: str) -> tuple[TuneSettings, list[Param]]:
    """The tune: block as (settings, parameters); unknown keys name the closest valid one."""
    if block is None:
        block = DEFAULT_SPACE
    if not isinstance(block, dict):
        raise UserError(f"{where}: expected a mapping of key: values to try, got {type(block).__name__}")
    block = renamed_keys(block, where)
    names = {f.name for f in dataclasses.fields(TuneSettings)}
    settings = build_spec(TuneSettings, {k: v for k, v in block.items() if k in names}, where, "tune key")
    valid = [*typing.get_type_hints(TrainConfig), "lr_mult", *names]
    params = []
    for name, spec in block.items():
        if name in names:
            continue
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
            raise UserError(
                f"{where}: unknown tune key '{name}'.{f' Did you mean {close[0]!r}?' if close else ''}"
            )
        if name in ("train_folds", "seed", "device"):
            raise UserError(f"{where}: '{name}' is not a hyperparameter to tune")
        p = _param(name, spec, where)
        _check(p, where)
        params.append(p)
    if {"lr", "lr_mult"} <= {p.name for p in params}:
        raise UserError(f"{where}: tune either lr or lr_mult (a multiplier on the range test's LR), not both")
    return settings, params


def load_tune_recipe(path: str, overrides: list[str]) -> tuple[dict, TuneSettings, list[Param]]:
    """(the recipe's values with overrides, settings, parameters), all checked."""
    from kagglecv.core.config import load_config, parse_overrides

    raw = read_yaml(Path(path), "config file") if path else {}
    where = f"{path}: tune" if path else "tune"
    settings, params = parse_space(raw.get("tune"), where)
    load_config(path, overrides)  # the base recipe's own checks
    values = {k: v for k, v in renamed_keys(raw, str(path)).items() if k != "tune"}
    values.update(renamed_keys(parse_overrides(overrides), "override"))
    return values, settings, params


def parse_budget(text: str) -> float | None:
    """ "30m", "2h", "600s", "90" (seconds), or "" (no time limit) -> seconds."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:  # 0m would start no trial
        raise UserError(f"BUDGET must look like 600s, 30m or 2h, got {text!r} (above 0; empty for no limit)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---- the trials --------------------------------------------------------------------------------


def cached_lr(comp, cfg: TrainConfig, lr_dir: Path) -> float:
    """The range test's LR for this model, size and batch: run once, then read from lr_dir (under a
    lock, so two machines sharing runs/ do not both run it)."""
    from kagglecv.core import locks
    from kagglecv.train.one_fold import RunContext
    from kagglecv.train.run import find_lr, prepare_training

    out = lr_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', cfg.model)}-{cfg.img_size}px-bs{cfg.batch_size}"
    with locks.waiting(lr_dir / ".lock"):
        if (out / "lr_find.json").exists():
            return float(json.loads((out / "lr_find.json").read_text())["chosen"])
        device, inp, data = prepare_training(comp, cfg)
        return find_lr(RunContext(comp, cfg, data, inp, device, out))


def trial_config(trial, base: dict, params: list[Param], comp, lr_dir: Path) -> TrainConfig:
    """The base recipe with this trial's suggestions (lr from lr_mult x the cached range test)."""
    values = dict(base)
    mult = None
    for p in params:
        v = p.suggest(trial)
        if p.name == "lr_mult":
            mult = float(v)
        else:
            values[p.name] = v
    where = f"tune trial {trial.number}"
    if mult is not None or values.get("lr", "auto") == "auto":
        probe = build_config({**values, "lr": "auto"}, where)
        found = cached_lr(comp, probe, lr_dir)
        values["lr"] = float(min(found * (mult or 1.0), 9.99))
        trial.set_user_attr("lr", values["lr"])
    return build_config(values, where)


def make_objective(comp, base: dict, settings: TuneSettings, params: list[Param], trials_dir: Path):
    import optuna

    from kagglecv.train.run import train

    def objective(trial) -> float:
        cfg = trial_config(trial, base, params, comp, trials_dir.parent / "lr")
        trial.set_user_attr("config", cfg.to_dict())
        run_dir = trials_dir / f"trial-{trial.number}"

        def on_epoch(row: dict) -> None:
            # a separate step per fold and epoch, so the pruner compares like with like
            trial.report(float(row["metric"]), int(row["fold"]) * 1000 + int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {row['fold']} epoch {row['epoch']}: {row['metric']:.4f}")

        quiet, console.quiet = console.quiet, True
        try:
            folds = list(range(settings.tune_folds))
            train(
                comp,
                dataclasses.replace(cfg, train_folds=settings.tune_folds),
                run_dir,
                folds,
                on_epoch=on_epoch,
            )
        finally:
            console.quiet = quiet
            for p in run_dir.glob("*.pt"):  # a trial's weights are never used again; its curves are
                p.unlink(missing_ok=True)
        return float(json.loads((run_dir / "summary.json").read_text())["cv_mean"])

    return objective


# ---- the study ---------------------------------------------------------------------------------


def run_tune(
    comp, config: str, overrides: list[str], trials: int | None, budget: float | None, storage: str = ""
) -> dict:
    """Run (or continue) the study until `trials` trials are finished in it (all machines together)
    or `budget` seconds have passed here; then write the tuned recipe and tune.html."""
    import optuna

    from kagglecv.core.runs import RUNS_DIR
    from kagglecv.prepare.layout import read_prepared
    from kagglecv.tune.page import write_outputs

    base, settings, params = load_tune_recipe(config, overrides)
    if trials is None and budget is None:
        raise UserError("give TRIALS=N or BUDGET=30m (or both): the study needs a way to stop")
    read_prepared(comp)  # not prepared: one line now, not a failed trial later
    root = RUNS_DIR / comp.slug
    root.mkdir(parents=True, exist_ok=True)
    name = f"{comp.slug}-{Path(config).stem if config else 'default'}"
    storage = storage or os.environ.get(STORAGE_ENV, "") or f"sqlite:///{root / 'tune.db'}"
    study = _open_study(comp, name, storage, settings, root)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    before = len(study.get_trials(states=done))
    console.print(
        f"[bold]tune[/] study {name} ({escape(masked_url(storage))}): {before} trials so far · "
        + " · ".join(p.name + " " + p.describe() for p in params)
        + f" · {settings.tune_folds} fold(s) per trial"
        + (f" · until {trials} trials" if trials else "")
        + (f" · {budget:.0f} s budget" if budget else "")
    )
    objective = make_objective(comp, base, settings, params, root / "tune" / name)
    callbacks = [_report_trial]
    if trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=done))
    t0 = time.time()
    try:
        if trials is None or before < trials:
            study.optimize(
                objective, timeout=budget, callbacks=callbacks, catch=(UserError,), gc_after_trial=True
            )
    finally:  # Ctrl-C included: the finished trials are in the database; show what they found
        result = write_outputs(study, comp, base, config, root)
        result["seconds"] = time.time() - t0
    return result


def _open_study(comp, name: str, storage: str, settings, root: Path):
    """The study, made or loaded (rerunning continues it; other machines join it)."""
    import optuna

    from kagglecv.core.locks import waiting
    from kagglecv.core.metrics import HIGHER_IS_BETTER

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its failed-trial tracebacks: we say it in one line
    # optuna's own handler keeps the sys.stderr of the moment it was made (a replaced or closed one
    # later on); its records go to Python's logging instead, which reads the current stderr
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    # two processes that create one new SQLite study at once race on optuna's schema table
    # (IntegrityError on alembic_version): the first creates it, the others then load it
    with waiting(root / ".tune.lock"), storage_errors(storage):
        return optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,  # rerunning continues it; other machines join it
            direction="maximize" if HIGHER_IS_BETTER[comp.metric] else "minimize",
            sampler=optuna.samplers.TPESampler(seed=None, n_startup_trials=max(settings.startup_trials, 1)),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs
            ),
        )


def _report_trial(study, trial) -> None:
    state = trial.state.name.lower()
    value = (
        f"{trial.value:.4f}"
        if trial.value is not None
        else (
            f"{list(trial.intermediate_values.values())[-1]:.4f} when stopped"
            if trial.intermediate_values
            else "-"
        )
    )
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    best = ""
    try:
        best = f" · best so far {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        pass
    why = ""
    if trial.state.name == "FAIL":
        why = " · " + str(trial.system_attrs.get("fail_reason", "")).splitlines()[-1][:200]
    console.print(f"trial {trial.number} {state}: {value} · {params}{best}{why}", soft_wrap=True)
