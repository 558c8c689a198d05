"""Blends of finished runs, with weights fitted on their out-of-fold predictions.

    kagglecv blend -c digits-small                  # every finished run with the same folds
    kagglecv blend -c digits-small --runs a b c     # these runs
    kagglecv submit -c digits-small --run blend-<id>

Reads each member's oof.csv and summary.json (never writes them) and writes one new folder,
runs/<comp>/blend-<id>/: blend.json (members, weights, how they were fitted), oof.csv and
summary.json in the same shape as a training run's, so the runs table, the report's CV table and
`submit` read a blend like any run.

Weights: greedy ensemble selection with replacement (Caruana et al. 2004) on the competition's own
metric: start from the best member, then repeatedly add (again, if it helps) the member that most
improves the blend; weights are the counts, so they are non-negative and sum to one. Where the
metric is ROC AUC, members are rank-averaged (only the order of the scores counts there, and ranks
put members with different calibrations on one scale).

The blend's CV is honest: for every fold, weights are fitted on the other folds' OOF rows and scored
on the held-out fold; the blend's oof.csv holds exactly those held-out predictions. The weights
used for the test set are fitted on all OOF rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.metrics import HIGHER_IS_BETTER, score
from kagglecv.core.names import check_name
from kagglecv.core.run_files import (
    BLEND_FILE,
    BLEND_PREFIX,
    combine,
    fingerprint,
    is_blend,
    member_inputs,
    read_blend,
)
from kagglecv.core.runs import RUNS_DIR, SUMMARY, read_summary, run_folders

MAX_ROUNDS = 50  # greedy steps; more only refines weights in steps of 1/rounds
PATIENCE = 5  # stop after this many steps without improvement


@dataclass
class Member:
    """One finished run as the blend sees it: its OOF probabilities in the shared row order."""

    name: str
    dir: Path
    summary: dict
    oof: pd.DataFrame  # image, label, fold, p_<class>...
    classes: list[str]

    @property
    def probs(self) -> np.ndarray:
        return self.oof[[f"p_{c}" for c in self.classes]].to_numpy(dtype=np.float64)


def _load_member(slug: str, name: str) -> Member:
    run_dir = RUNS_DIR / slug / check_name(name, f"each of RUNS (a run id in {RUNS_DIR / slug}/)")
    if not run_dir.is_dir():
        raise UserError(f"no run '{name}' for {slug} in {RUNS_DIR / slug}/ (`make runs` lists them)")
    if is_blend(run_dir):  # its test predictions would need its own members' again: blend those
        inner = " ".join(str(m) for m in read_blend(run_dir).get("members", []))
        raise UserError(
            f"{name} is a blend, and a blend's members must be training runs: name its runs instead "
            f'(RUNS="{inner} ...")'
        )
    if not (run_dir / SUMMARY).exists():
        raise UserError(
            f"run {name} did not finish (no {SUMMARY}): finish it (`make train RESUME=1 RUN={name}`) "
            "or leave it out of RUNS="
        )
    summary = read_summary(run_dir)
    oof_path = run_dir / "oof.csv"
    if not oof_path.exists():
        raise UserError(f"{oof_path} is missing: `make train RESUME=1 RUN={name}` gathers it again")
    try:
        oof = pd.read_csv(oof_path, dtype={"image": str, "label": str})
    except (OSError, ValueError) as e:
        raise UserError(f"{oof_path} is unreadable ({type(e).__name__}); gather it again") from None
    classes = [c[2:] for c in oof.columns if c.startswith("p_")]
    if not classes or not {"image", "label", "fold"} <= set(oof.columns):
        raise UserError(f"{oof_path}: needs columns image, label, fold and p_<class>; gather it again")
    oof = oof.sort_values("image", kind="stable").reset_index(drop=True)
    return Member(name, run_dir, summary, oof, classes)


def _same_folds(members: list[Member]) -> None:
    first = members[0]
    for m in members[1:]:
        if m.classes != first.classes:
            raise UserError(
                f"runs {first.name} and {m.name} predict different classes; they can't be blended"
            )
        same = len(m.oof) == len(first.oof) and (
            (m.oof["image"].to_numpy() == first.oof["image"].to_numpy()).all()
            and (m.oof["fold"].to_numpy() == first.oof["fold"].to_numpy()).all()
        )
        if not same:
            raise UserError(
                f"runs {first.name} and {m.name} were trained on different folds (or different folds "
                "finished); a blend needs every member's OOF rows on the same folds"
            )


def member_dir(blend_dir: Path, name: str) -> Path:
    """The run folder of a blend's member, or one line on why the blend cannot be predicted."""
    member = blend_dir.parent / check_name(name, f"{blend_dir / BLEND_FILE}: a member")
    if not member.is_dir():
        raise UserError(
            f"blend {blend_dir.name} needs run {name}, which is gone from {blend_dir.parent}/: retrain it "
            "under that name, or blend again without it (`make blend RUNS=...`)"
        )
    if is_blend(member):  # made before `make blend` refused blends as members
        raise UserError(
            f"blend {blend_dir.name} has blend {name} as a member, which cannot be predicted: blend the "
            "training runs themselves (`make blend RUNS=...`)"
        )
    return member


def load_members(slug: str, names: list[str] | None) -> list[Member]:
    """The named runs, or by default every finished (non-blend) run with the same folds as the best."""
    base = RUNS_DIR / slug
    if names:
        twice = [n for n in dict.fromkeys(names) if names.count(n) > 1]
        if twice:
            raise UserError(f"{twice[0]} is named twice in RUNS=; name each run once")
        # by name: the fit (greedy ties go to the first member) must not depend on the order given
        members = [_load_member(slug, n) for n in sorted(names)]
    else:
        found = [p.name for p in run_folders(base, SUMMARY)]  # a folder breaking the name rule: skipped
        members = [_load_member(slug, n) for n in found if not is_blend(base / n)]
    if len(members) < 2:
        have = ", ".join(m.name for m in members) or "none"
        raise UserError(
            f"a blend needs at least two finished runs of {slug} (finished: {have}); train another"
        )
    if not names:  # keep the runs that share the folds of the best-scoring one
        best = max(members, key=lambda m: _signed(m.summary["metric"], m.summary["cv_mean"]))
        key = (tuple(best.oof["image"]), tuple(best.oof["fold"]))
        members = [m for m in members if (tuple(m.oof["image"]), tuple(m.oof["fold"])) == key]
        if len(members) < 2:
            raise UserError(
                f"no other finished run of {slug} shares the folds of {best.name}; name RUNS= yourself"
            )
    _same_folds(members)
    return members


def _signed(metric: str, value: float) -> float:
    """A score where larger is always better."""
    return value if HIGHER_IS_BETTER[metric] else -value


def greedy_weights(metric: str, y: np.ndarray, inputs: list[np.ndarray]) -> np.ndarray:
    """Ensemble selection with replacement: counts of greedy picks, normalised to sum to one."""
    singles = [_signed(metric, score(metric, y, p)) for p in inputs]
    counts = np.zeros(len(inputs))
    counts[int(np.argmax(singles))] = 1
    best, stale = max(singles), 0
    for _ in range(MAX_ROUNDS):
        trials = []
        for j in range(len(inputs)):
            c = counts.copy()
            c[j] += 1
            trials.append(_signed(metric, score(metric, y, combine(inputs, c / c.sum()))))
        j = int(np.argmax(trials))
        counts[j] += 1
        if trials[j] > best + 1e-12:
            best, stale = trials[j], 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    return counts / counts.sum()


def fit_blend(metric: str, y: np.ndarray, folds: np.ndarray, inputs: list[np.ndarray]) -> dict:
    """Honest CV (weights fitted without the held-out fold) and the weights fitted on every row."""
    nested = np.zeros_like(inputs[0])
    fold_scores, fold_weights = [], []
    for f in np.unique(folds):
        held = folds == f
        w = greedy_weights(metric, y[~held], [p[~held] for p in inputs])
        nested[held] = combine([p[held] for p in inputs], w)
        fold_scores.append(score(metric, y[held], nested[held]))
        fold_weights.append(w.tolist())
    return {
        "weights": greedy_weights(metric, y, inputs).tolist(),
        "fold_scores": [float(s) for s in fold_scores],
        "fold_weights": fold_weights,
        "oof": nested,
    }


def blend_id(names: list[str]) -> str:
    return BLEND_PREFIX + hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:8]


def blend(slug: str, names: list[str] | None = None) -> Path:
    """Fit and write runs/<slug>/blend-<id>/; returns the folder."""
    members = load_members(slug, names)
    metric = members[0].summary["metric"]
    first = members[0]
    y = first.oof["label"].map({c: i for i, c in enumerate(first.classes)}).to_numpy()
    folds = first.oof["fold"].to_numpy()
    t0 = time.time()
    fit = fit_blend(metric, y, folds, member_inputs(metric, [m.probs for m in members]))
    out = RUNS_DIR / slug / blend_id([m.name for m in members])
    out.mkdir(parents=True, exist_ok=True)
    oof = first.oof[["image", "label", "fold"]].copy()
    for i, c in enumerate(first.classes):
        oof[f"p_{c}"] = fit["oof"][:, i]
    oof["pred"] = [first.classes[i] for i in fit["oof"].argmax(1)]
    atomic_write(out / "oof.csv", lambda p: oof.to_csv(p, index=False))
    spec = {
        "members": [m.name for m in members],
        "weights": fit["weights"],
        "fold_weights": fit["fold_weights"],
        "method": "rank average, greedy selection" if metric == "roc_auc" else "greedy selection",
        "metric": metric,
        "classes": first.classes,
        # which runs these are: a member trained again under its name is not what was fitted
        "fingerprints": {m.name: fingerprint(m.dir) for m in members},
    }
    atomic_write(out / BLEND_FILE, lambda p: p.write_text(json.dumps(spec, indent=2)))
    # config.yaml marks a run folder (runs.find_run); a blend's says what it is made of
    atomic_write(out / "config.yaml", lambda p: p.write_text(json.dumps({"blend": spec["members"]}) + "\n"))
    summary = {
        "competition": slug,
        "run": out.name,
        "kind": "blend",
        "model": " + ".join(
            f"{w:.2f}·{m.name}" for m, w in zip(members, fit["weights"], strict=True) if w > 0
        ),
        "members": spec["members"],
        "weights": spec["weights"],
        "folds": len(fit["fold_scores"]),
        "fold_ids": [int(f) for f in np.unique(folds)],
        "metric": metric,
        "higher_is_better": HIGHER_IS_BETTER[metric],
        "cv_mean": float(np.mean(fit["fold_scores"])),
        "cv_std": float(np.std(fit["fold_scores"])),
        "fold_scores": fit["fold_scores"],
        "oof_score": float(score(metric, y, fit["oof"])),
        "img_size": None,
        "seconds": round(time.time() - t0, 2),
        "device": "cpu",
        "finished_at": time.time(),  # as a run's; `make runs` forgets test scores from before it
    }
    atomic_write(out / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=2)))
    return out


def blend_and_say(comp, names: list[str] | None) -> Path:
    """`kagglecv blend`: fit, write, and say the honest CV and the weights."""
    from kagglecv.core.console import console

    out = blend(comp.slug, names)
    s = json.loads((out / SUMMARY).read_text())
    weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(s["members"], s["weights"], strict=True))
    console.print(
        f"[green]✓[/] {out.name}: honest CV {comp.metric} [bold]{s['cv_mean']:.4f} ± {s['cv_std']:.4f}[/] "
        f"(weights fitted on the other folds), OOF {s['oof_score']:.4f}; weights: {weights}"
    )
    console.print(f"-> {out}/  (`make submit RUN={out.name}` writes its submission)")
    return out
