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

Without a tune: block the built-in space is searched (a line says which). Keys given in ARGS win:
fixed for every trial, left out of the search (a line says so), and part of the study's name,
<comp>-<recipe>[-<ARGS>], so a study continues only with the ARGS it started with.

Every value is checked against the recipe key's type when the recipe loads. `lr_mult` multiplies
the LR range test's suggestion, which is run once per (model, img_size, batch_size) and cached in
runs/<comp>/tune/lr/. A trial trains the first `tune_folds` folds through train.train (folds
claimed, resume state, everything real) into runs/<comp>/tune/<study>/trial-<n>/, reports every
epoch's validation score to Optuna and is stopped by its MedianPruner when it falls behind the
median of earlier trials at the same epoch. The study lives in runs/<comp>/tune.db (SQLite) or
--storage / $KAGGLECV_STORAGE (any database URL Optuna takes: several machines then work on one
study; the variable keeps a password out of `ps`, and a printed URL shows it as ***). Ctrl-C keeps
the finished trials; rerunning continues the study. A failed trial's line says why; three failures
in a row stop the study with one line. The best trial becomes configs/tuned-<comp>.yaml (the whole
recipe, ready for `make train CONFIG=...`; a better score than the file's own, else
configs/tuned-<study>.yaml: page.py) and runs/<comp>/tune.html shows the study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path

from rich.markup import escape

from kagglecv.core.config import TrainConfig, build_config
from kagglecv.core.console import console
from kagglecv.core.errors import UserError, one_line
from kagglecv.tune.space import Param, TuneSettings, load_tune_recipe
from kagglecv.tune.storage import STORAGE_ENV, masked_url, storage_errors

FAILS_IN_A_ROW = 3  # trials failing one after another with nothing finished between: the study stops


def parse_budget(text: str) -> float | None:
    """ "30m", "2h", "600s", "90" (seconds), or "" (no time limit) -> seconds."""
    if not text:
        return None
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", text)
    if not m:
        raise UserError(f"BUDGET must look like 600s, 30m or 2h, got {text!r} (empty for no limit)")
    seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds < 1:  # 0m would start no trial; 0.5s was shown as a "0 s budget"
        raise UserError(
            f"BUDGET must be 1 second or more, got {text!r} (600s, 30m or 2h; empty for no limit)"
        )
    return seconds


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
        try:
            return run_trial(trial)
        except UserError as e:  # optuna keeps no reason for a failed trial: the report line needs it
            trial.set_user_attr("fail_reason", one_line(str(e), 2000))  # whole: the study's last line
            raise

    def run_trial(trial) -> float:
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

    base, settings, params, notes = load_tune_recipe(config, overrides)
    if trials is None and budget is None:
        raise UserError("give TRIALS=N or BUDGET=30m (or both): the study needs a way to stop")
    read_prepared(comp)  # not prepared: one line now, not a failed trial later
    probe_base_model(base, params)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    root = RUNS_DIR / comp.slug
    root.mkdir(parents=True, exist_ok=True)
    name = study_name(comp.slug, config, overrides)
    storage = storage or os.environ.get(STORAGE_ENV, "") or f"sqlite:///{root / 'tune.db'}"
    study = _open_study(comp, name, storage, settings, root)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    before = len(study.get_trials(states=done))
    console.print(
        f"[bold]tune[/] study {name} ({escape(masked_url(storage))}): {before} trials so far · "
        + " · ".join(p.name + " " + p.describe() for p in params)
        + f" · {settings.tune_folds} fold(s) per trial"
        + (f" · until {trials} trials" if trials else "")
        + (f" · {budget:.{0 if budget == int(budget) else 1}f} s budget" if budget else "")
    )
    objective = make_objective(comp, base, settings, params, root / "tune" / name)
    failing = FailStreak()
    callbacks = [_report_trial, failing]
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
    failing.stop_here()
    return result


def study_name(slug: str, config: str, overrides: list[str]) -> str:
    """<comp>-<recipe>, and the ARGS that fix keys for every trial: a study continues only with the
    same ones (its trials are comparable), other ARGS start another study."""
    from kagglecv.core.config import parse_overrides, renamed_keys

    # plain characters only: the name goes into configs/tuned-<study>.yaml, a tuned recipe's first
    # line (read back by page.HEAD) and a `make train CONFIG=...` hint that must paste as it is
    name = f"{slug}-{_plain(Path(config).stem) if config else 'default'}"
    fixed = renamed_keys(parse_overrides(overrides), "override")
    if not fixed:
        return name
    args = "+".join(f"{k}={v}" for k, v in sorted(fixed.items()))
    tag = _plain(args)
    return f"{name}-{tag if len(tag) <= 48 else hashlib.sha256(args.encode()).hexdigest()[:12]}"


def _plain(text: str) -> str:
    """Runs of anything but letters, digits and _ . = + - as one _ ("my smoke" -> "my_smoke")."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)


def probe_base_model(base: dict, params: list[Param]) -> None:
    """The recipe's model and weights, where no trial changes them: an offline hub or a missing
    weights file is one line now, not the reason every trial fails."""
    from kagglecv.train.run import probe_model

    if not {p.name for p in params} & {"model", "pretrained", "pretrained_file", "in_chans"}:
        probe_model(build_config(base, "tune"))


class FailStreak:
    """A study callback: after FAILS_IN_A_ROW failed trials with none finished between, stop the
    study (each would fail the same way until something is fixed) and then say why in one line."""

    def __init__(self) -> None:
        self.count, self.reason = 0, ""

    def __call__(self, study, trial) -> None:
        failed = trial.state.name == "FAIL"
        self.count = self.count + 1 if failed else 0
        self.reason = trial.user_attrs.get("fail_reason", "") if failed else ""
        if self.count >= FAILS_IN_A_ROW:
            study.stop()

    def stop_here(self) -> None:
        if self.count >= FAILS_IN_A_ROW:
            raise UserError(
                f"the last {self.count} trials failed, so the study stopped: {self.reason or 'see above'}; "
                "fix that and rerun `make tune` (the study continues)"
            )


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
    if trial.state.name == "FAIL":  # the UserError's message, kept by the objective
        why = " · " + (one_line(trial.user_attrs.get("fail_reason", "")) or "see the messages above")
    console.print(f"trial {trial.number} {state}: {value} · {params}{best}{escape(why)}", soft_wrap=True)
