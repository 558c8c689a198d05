"""Post-processing for probability metrics (log loss), fitted on out-of-fold predictions.

    plan = choose_postprocess("log_loss", y, oof_probs, folds)   # {"kind": "temperature", "T": 1.3, ...}
    test = apply_postprocess(plan, test_probs)

Candidates: nothing, temperature scaling (one parameter: softmax(log p / T)), clipping (p kept in
[eps, 1 - eps], renormalised), and both. Each is judged by honest nested CV: its parameters are
fitted on the other folds' OOF rows and scored on the held-out fold, so a candidate is kept only
when it improves log loss on rows it never saw. Other metrics (accuracy, F1, AUC) do not change
under these monotone maps, so nothing is applied there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from kagglecv.core.console import console
from kagglecv.core.metrics import score

CLIP_GRID = (1e-3, 3e-3, 1e-2, 2e-2, 5e-2)
T_BOUNDS = (0.05, 20.0)
KINDS = ("none", "temperature", "clip", "temperature+clip")


def temperature(probs: np.ndarray, t: float) -> np.ndarray:
    logits = np.log(np.clip(probs, 1e-15, 1.0)) / t
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def clip(probs: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(probs, eps, 1 - eps)
    return p / p.sum(1, keepdims=True)


def _fit_t(y: np.ndarray, probs: np.ndarray) -> float:
    res = minimize_scalar(
        lambda t: score("log_loss", y, temperature(probs, t)), bounds=T_BOUNDS, method="bounded"
    )
    return float(res.x)


def _fit_eps(y: np.ndarray, probs: np.ndarray) -> float:
    return min(CLIP_GRID, key=lambda eps: score("log_loss", y, clip(probs, eps)))


def fit(kind: str, y: np.ndarray, probs: np.ndarray) -> dict:
    plan: dict = {"kind": kind}
    if "temperature" in kind:
        plan["T"] = _fit_t(y, probs)
        probs = temperature(probs, plan["T"])
    if "clip" in kind:
        plan["eps"] = _fit_eps(y, probs)
    return plan


def apply_postprocess(plan: dict | None, probs: np.ndarray) -> np.ndarray:
    if not plan or plan.get("kind", "none") == "none":
        return probs
    if "T" in plan:
        probs = temperature(probs, plan["T"])
    if "eps" in plan:
        probs = clip(probs, plan["eps"])
    return probs


def nested_score(kind: str, y: np.ndarray, probs: np.ndarray, folds: np.ndarray) -> float:
    """Log loss of `kind` with parameters fitted on the other folds, over every held-out row."""
    out = np.empty_like(probs)
    for f in np.unique(folds):
        held = folds == f
        out[held] = apply_postprocess(fit(kind, y[~held], probs[~held]), probs[held])
    return score("log_loss", y, out)


def choose_postprocess(metric: str, y: np.ndarray, probs: np.ndarray, folds: np.ndarray) -> dict:
    """The candidate with the best nested-CV log loss (ties keep the simpler one), refitted on all
    rows, with every candidate's nested score for the record."""
    if metric != "log_loss":
        return {"kind": "none", "why": f"{metric} does not change under calibration"}
    if len(np.unique(folds)) < 2:
        return {"kind": "none", "why": "the OOF predictions hold one fold, so nested CV cannot choose"}
    scores = {k: nested_score(k, y, probs, folds) for k in KINDS}
    best = min(KINDS, key=lambda k: (round(scores[k], 6), KINDS.index(k)))
    plan = fit(best, y, probs)
    plan["nested_log_loss"] = {k: round(v, 6) for k, v in scores.items()}
    return plan


def postprocess_for_run(metric: str, run_dir: Path, classes: list[str]) -> dict:
    """The plan for a run's (or blend's) test predictions, chosen on its oof.csv; said in one line."""
    if metric != "log_loss":
        return {"kind": "none"}
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"label": str})
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = oof[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
    plan = choose_postprocess(metric, y, probs, oof["fold"].to_numpy())
    if "nested_log_loss" not in plan:  # a run of one fold (FOLDS=0): said, not a KeyError
        console.print(f"post-processing: none ({plan['why']})")
        return plan
    fitted = ", ".join(f"{k} = {plan[k]:.4g}" for k in ("T", "eps") if k in plan)
    gain = plan["nested_log_loss"]["none"] - plan["nested_log_loss"][plan["kind"]]
    console.print(
        f"post-processing chosen on OOF log loss by nested CV: {plan['kind']}"
        + (f" ({fitted}; OOF log loss {gain:+.4f} better)" if fitted else " (nothing improved it)")
    )
    return plan
