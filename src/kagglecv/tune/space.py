"""The search space of `make tune`: the recipe's `tune:` block (the rules are in study.py's
docstring), or the built-in space where the recipe has none, less the keys ARGS fix.

    values, settings, params, notes = load_tune_recipe("configs/tune-demo.yaml", ["epochs=2"])

ARGS win over the tune: block: a key given there is fixed for every trial and left out of the search,
and the study's name carries it (study.py), so other ARGS never continue this study. `notes` are the
lines that say so, and that the built-in space is searched.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kagglecv.core.config import TrainConfig, build_spec, check_fields, key, read_yaml, renamed_keys
from kagglecv.core.errors import UserError

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
    """A YAML spec as a Param (the rules are in study.py's docstring)."""
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


def load_tune_recipe(path: str, overrides: list[str]) -> tuple[dict, TuneSettings, list[Param], list[str]]:
    """(the recipe's values with overrides, settings, parameters, notes to show), all checked."""
    from kagglecv.core.config import load_config, parse_overrides

    raw = read_yaml(Path(path), "config file") if path else {}
    where = f"{path}: tune" if path else "tune"
    settings, params = parse_space(raw.get("tune"), where)
    load_config(path, overrides)  # the base recipe's own checks
    values = {k: v for k, v in renamed_keys(raw, str(path)).items() if k != "tune"}
    fixed = renamed_keys(parse_overrides(overrides), "override")
    values.update(fixed)
    notes = []
    if raw.get("tune") is None:
        notes.append(
            f"{path or 'the recipe'} has no tune: block, so the built-in space is searched: "
            f"{describe_space(params)} (a tune: block in the recipe sets your own)"
        )
    params, fixed_note = without_fixed(params, fixed)
    return values, settings, params, notes + fixed_note


def describe_space(params: list[Param]) -> str:
    return ", ".join(f"{p.name} {p.describe()}" for p in params)


def without_fixed(params: list[Param], fixed: dict) -> tuple[list[Param], list[str]]:
    """The parameters ARGS leave to search (lr fixes lr_mult too), and the line that says which not."""
    dropped = [p for p in params if p.name in fixed or (p.name == "lr_mult" and "lr" in fixed)]
    if not dropped:
        return params, []
    what = "; ".join(
        f"{p.name} {p.describe()}"
        + (f" (ARGS {p.name}={fixed[p.name]})" if p.name in fixed else " (ARGS lr)")
        for p in dropped
    )
    kept = [p for p in params if p not in dropped]
    if not kept:
        raise UserError(
            f"ARGS fix every key the search would tune ({what}): nothing is left to search; "
            "leave them out of ARGS, or tune other keys"
        )
    return kept, [f"ARGS win over the tune: block: not searched, fixed for every trial: {what}"]
