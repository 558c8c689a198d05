"""What the out-of-fold predictions say, as numbers and tables: the report's analysis.

Reads a finished run folder once (`load_run`) and derives the confusion matrix, the most confused
pairs, per-class scores, the top losses, the suspect labels (cleanlab's confident learning) and
the majority-class baseline that tells a weak model from a useful one. No figures, no HTML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from kagglecv.core.errors import UserError
from kagglecv.core.run_files import is_blend, read_blend
from kagglecv.core.runs import read_summary

# A suspect label: the model predicts another class at least as surely as it usually predicts that class
# on its own images (capped: a confident model needs no more than even odds)
SUSPECT_MIN_P_OTHER = 0.5
TOP_PAIRS = 10
GRID_IMAGES = 16
# below this share of the way from the majority-class baseline to a perfect score, a model is "near chance"
NEAR_CHANCE = 0.2


@dataclass
class Run:
    """A finished run folder, read once."""

    dir: Path
    summary: dict
    config_text: str | None
    metrics: pd.DataFrame | None
    lr_find: dict | None
    oof: pd.DataFrame
    classes: list[str]
    y: np.ndarray  # given label, as a class index
    probs: np.ndarray  # N x C out-of-fold probabilities

    @property
    def config(self) -> dict:
        try:
            cfg = yaml.safe_load(self.config_text or "")
        except yaml.YAMLError:
            return {}
        return cfg if isinstance(cfg, dict) else {}

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(1)


def load_run(run_dir: Path) -> Run:
    """Read a run folder; missing optional pieces (lr_find.json, metrics.csv, config.yaml) become None."""
    run_dir = Path(run_dir)
    oof_path = run_dir / "oof.csv"
    summary = read_summary(run_dir)
    # a blend's oof.csv is rewritten by blending again, a run's by training it again
    redo = f"`make blend RUNS=...` again ({run_dir.name} is a blend)" if is_blend(run_dir) else "retrain it"
    if is_blend(run_dir):
        read_blend(run_dir, current=True)  # a member trained again since: its CV is no longer this blend's
    if not oof_path.exists():
        raise UserError(f"run {run_dir} has no oof.csv, so there is nothing to report on; {redo}")
    try:
        oof = pd.read_csv(oof_path, dtype={"label": str, "pred": str, "image": str})
    except (ValueError, pd.errors.ParserError) as e:
        raise UserError(f"run {run_dir}: unreadable oof.csv ({e}); {redo}") from None
    classes = [c[2:] for c in oof.columns if c.startswith("p_")]
    missing = {"image", "label"} - set(oof.columns)
    if missing or len(classes) < 2:
        raise UserError(f"{oof_path}: needs columns image, label and p_<class> per class; {redo}")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(oof["label"]) - set(index))
    if unknown:
        raise UserError(f"{oof_path}: labels {unknown[:5]} have no p_<class> column; {redo}")
    probs = oof[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
    lr_path, metrics_path, config_path = (
        run_dir / "lr_find.json",
        run_dir / "metrics.csv",
        run_dir / "config.yaml",
    )
    return Run(
        dir=run_dir,
        summary=summary,
        config_text=config_path.read_text() if config_path.exists() else None,
        metrics=_read_metrics(metrics_path),
        lr_find=json.loads(lr_path.read_text()) if lr_path.exists() else None,
        oof=oof,
        classes=classes,
        y=oof["label"].map(index).to_numpy(),
        probs=probs,
    )


METRIC_COLUMNS = {"fold", "epoch", "train_loss", "val_loss", "metric"}


def _read_metrics(path: Path) -> pd.DataFrame | None:
    """metrics.csv, or None where it is missing, empty or from an older layout (the curves are skipped)."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return df if METRIC_COLUMNS <= set(df.columns) and len(df) else None


def confusion(run: Run) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(run.y, run.pred, labels=list(range(len(run.classes))))


def most_confused(cm: np.ndarray, classes: list[str], k: int = TOP_PAIRS) -> pd.DataFrame:
    """The k largest off-diagonal cells: (true class, predicted class, count, share of the true class)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = []
    for t, p in zip(*np.unravel_index(flat, off.shape), strict=True):
        if off[t, p] == 0:
            break
        rows.append((classes[t], classes[p], int(off[t, p]), off[t, p] / max(cm[t].sum(), 1)))
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "share of true"])


def per_class(run: Run) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (scikit-learn), worst F1 first."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        run.y, run.pred, labels=list(range(len(run.classes))), zero_division=0
    )
    df = pd.DataFrame({"class": run.classes, "precision": p, "recall": r, "f1": f, "support": s})
    return df.sort_values(["f1", "support"], ascending=[True, False], kind="stable").reset_index(drop=True)


def losses(run: Run) -> pd.DataFrame:
    """Per sample: given label's probability, the best other class and its probability, the log loss."""
    n = len(run.y)
    p_label = run.probs[np.arange(n), run.y]
    others = run.probs.copy()
    others[np.arange(n), run.y] = -1.0
    other = others.argmax(1)
    p_other = others[np.arange(n), other]
    df = pd.DataFrame(
        {
            "image": run.oof["image"],
            "label": run.oof["label"],
            "suggested": [run.classes[j] for j in other],
            "p_label": p_label,
            "p_suggested": p_other,
            "loss": -np.log(np.clip(p_label, 1e-15, 1.0)),
        }
    )
    if "fold" in run.oof:
        df["fold"] = run.oof["fold"]
    return df


def top_losses(run: Run, k: int = GRID_IMAGES) -> pd.DataFrame:
    """The k out-of-fold images whose given label got the least probability (fastai's plot_top_losses)."""
    df = losses(run).rename(columns={"suggested": "predicted", "p_suggested": "p_predicted"})
    wrong = run.pred != run.y
    # where the model was right, the "predicted" column would name the runner-up; show the real prediction
    df.loc[~wrong, "predicted"] = df.loc[~wrong, "label"]
    df.loc[~wrong, "p_predicted"] = df.loc[~wrong, "p_label"]
    return df.sort_values("loss", ascending=False, kind="stable").head(k).reset_index(drop=True)


def class_thresholds(run: Run, cap: float = SUSPECT_MIN_P_OTHER) -> np.ndarray:
    """Per class j: the mean probability the model gives j on images labelled j, capped at `cap`.

    Confident learning's per-class threshold (Northcutt et al., cleanlab): it adapts to how sure the
    model is of each class, so an under-trained or smoothed model still gets suspects; the cap keeps a
    very confident model from needing more than even odds before it may disagree.
    """
    t = np.full(len(run.classes), cap)
    for j in range(len(run.classes)):
        own = run.probs[run.y == j, j]
        if len(own):
            t[j] = min(float(own.mean()), cap)
    return t


def suspect_labels(run: Run) -> pd.DataFrame:
    """Samples the model (which never trained on them) gives to another class with confidence.

    cleanlab's confident learning (`find_label_issues`, pruned by noise rate) over the out-of-fold
    probabilities, with our per-class thresholds (class_thresholds: capped at even odds, where
    cleanlab's own would ask a very sure model for near-certainty before it may disagree). Ranked by
    how much more the model believes the suggested class than the given label (p_suggested -
    p_label, cleanlab's normalized margin), so flipped labels come first and hard, ambiguous images last.
    """
    from cleanlab.count import compute_confident_joint
    from cleanlab.filter import find_label_issues

    df = losses(run)
    present = np.bincount(run.y, minlength=len(run.classes)) > 0
    if len(run.y) == 0 or present.sum() < 2:  # confident learning needs two classes to confuse
        keep = np.array([], dtype=int)
    else:
        joint = compute_confident_joint(run.y, run.probs, thresholds=class_thresholds(run))
        keep = find_label_issues(
            run.y, run.probs, confident_joint=joint, return_indices_ranked_by="normalized_margin", n_jobs=1
        )
    df = df.iloc[keep].copy()
    df["margin"] = df["p_suggested"] - df["p_label"]
    df = df.sort_values(["margin", "loss"], ascending=False, kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    cols = ["rank", "image", "label", "suggested", "p_label", "p_suggested", "margin"]
    return df[cols + (["fold"] if "fold" in df else [])]


def near_chance(run: Run) -> tuple[float, float] | None:
    """(OOF score, baseline) when the model is near chance, else None. The baseline is the score of
    always predicting the training class frequencies under the competition's metric: the majority
    class for accuracy and F1, 0.5 for ROC AUC, the prior's entropy for log loss. Near chance: the
    model covers less than NEAR_CHANCE of the way from that baseline to a perfect score."""
    from kagglecv.core.metrics import HIGHER_IS_BETTER, baseline_score, score

    metric = run.summary.get("metric", "accuracy")
    if metric not in HIGHER_IS_BETTER or len(run.y) == 0:
        metric = "accuracy"
    base = baseline_score(metric, run.y, len(run.classes))
    ours = score(metric, run.y, run.probs)
    if np.isnan(base) or np.isnan(ours):
        return None
    best = 1.0 if HIGHER_IS_BETTER[metric] else 0.0
    if abs(best - base) < 1e-12:
        return None
    progress = (ours - base) / (best - base)
    return (ours, base) if progress < NEAR_CHANCE else None


def fold_ids(summary: dict) -> list[int]:
    """The folds this run trained (a run may train a subset, e.g. FOLDS=0,1 on one machine)."""
    return [int(k) for k in summary.get("fold_ids", range(len(summary.get("fold_scores", []))))]


def best_epochs(summary: dict) -> dict[int, int]:
    return dict(zip(fold_ids(summary), summary.get("best_epochs", []), strict=False))


def cv_rows(run: Run) -> pd.DataFrame:
    """One row per fold: score, best epoch, epochs trained, val loss at the best epoch."""
    s = run.summary
    rows = []
    best_at = best_epochs(s)
    for fold, score in zip(fold_ids(s), s.get("fold_scores", []), strict=False):
        best = best_at.get(fold)
        row = {
            "fold": fold,
            s.get("metric", "metric"): score,
            "best epoch": best,
            "epochs": None,
            "val_loss": None,
        }
        if run.metrics is not None:
            m = run.metrics[run.metrics["fold"] == fold]
            row["epochs"] = len(m) or None
            at = m[m["epoch"] == best]
            if len(at):
                row["val_loss"] = float(at["val_loss"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)
