"""Competition metrics. One code path scores both out-of-fold predictions and submission files
(which are first turned back into predictions), for every task kind (core/task.py):

    score(metric, y, probs)                        single-label: class indices, probabilities N x C
    score_multilabel(metric, Y, P, thresholds)     multi-label: 0/1 matrix N x C, sigmoid outputs N x C
    score_numeric(metric, y, pred, cuts)           ordinal / regression: targets N, predictions N

`constant_score` is the best constant prediction's score under the same metric, the bar a model
must clear and the number printed beside every model score."""

from __future__ import annotations

from typing import Any

import numpy as np

# metric -> whether higher is better
HIGHER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1_micro": True,
    "f1_macro": True,
    "f2_samples": True,
    "roc_auc": True,
    "mean_column_auc": True,
    "qwk": True,
    "log_loss": False,
    "rmse": False,
}


def score(metric: str, y_true: np.ndarray, probs: np.ndarray, positive: int = 1) -> float:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    if metric == "accuracy":
        return float(np.mean(y_true == probs.argmax(1))) if len(y_true) else float("nan")
    # scikit-learn's metrics take 1.4 s to import: only where they are needed, not in every process
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    if metric in ("f1_micro", "f1_macro"):
        labels = list(range(n_classes))
        return float(f1_score(y_true, probs.argmax(1), labels=labels, average=metric[3:], zero_division=0))
    if metric == "balanced_accuracy":
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(y_true, probs.argmax(1)))
    if metric == "mean_column_auc":  # one column per class, as plant-pathology-2020 scores it
        return mean_column_auc(np.eye(n_classes, dtype=int)[y_true], probs)
    if metric == "log_loss":
        # Kaggle clips probabilities so one confident mistake cannot cost infinity
        p = np.clip(probs, 1e-15, 1 - 1e-15)
        p = p / p.sum(1, keepdims=True)
        return float(log_loss(y_true, p, labels=list(range(n_classes))))
    if metric == "roc_auc":
        if len(np.unique(y_true)) < 2:
            return float("nan")
        if n_classes == 2:
            return float(roc_auc_score(y_true == positive, probs[:, positive]))
        return float(roc_auc_score(y_true, probs, multi_class="ovr", labels=list(range(n_classes))))
    raise ValueError(f"unknown metric {metric}")


def map_at_k(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Mean average precision at k with one true label per row: 1/rank of the true class among the
    k most probable, 0 when it is not among them (humpback whales, MAP@5)."""
    if not len(y_true):
        return float("nan")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    hit = top == np.asarray(y_true)[:, None]
    return float((hit / np.arange(1, top.shape[1] + 1)).sum(1).mean())


def mean_column_auc(truth: np.ndarray, probs: np.ndarray) -> float:
    """The mean of each column's ROC AUC (ranzcr, plant-pathology-2020); a column whose truth holds
    one value has no AUC and is left out, and NaN when no column has one."""
    from sklearn.metrics import roc_auc_score

    aucs = [
        roc_auc_score(truth[:, j], probs[:, j])
        for j in range(truth.shape[1])
        if len(np.unique(truth[:, j])) == 2
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def score_multilabel(metric: str, truth: np.ndarray, probs: np.ndarray, thresholds: Any = 0.5) -> float:
    """Multi-label scores: `truth` 0/1 (N x C), `probs` the sigmoid outputs, `thresholds` one per
    column (or one for all) turning them into tags. AUC reads the outputs, F-scores the tags."""
    truth = np.asarray(truth).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if not len(truth):
        return float("nan")
    if metric == "mean_column_auc":
        return mean_column_auc(truth, probs)
    from sklearn.metrics import fbeta_score

    tags = (probs >= np.broadcast_to(np.asarray(thresholds, dtype=np.float64), probs.shape)).astype(int)
    if metric in ("f1_micro", "f1_macro"):
        return float(fbeta_score(truth, tags, beta=1.0, average=metric[3:], zero_division=0))
    if metric == "f2_samples":  # planet: F2 per image, averaged over images
        return float(fbeta_score(truth, tags, beta=2.0, average="samples", zero_division=0))
    raise ValueError(f"unknown multi-label metric {metric}")


def score_numeric(
    metric: str, y_true: np.ndarray, pred: np.ndarray, levels: Any = None, cuts: Any = None
) -> float:
    """Ordinal and regression scores on one number per image. RMSE reads the numbers; grade metrics
    (QWK, accuracy) first cut them into `levels` (default: every whole number from the smallest to
    the largest true grade) at `cuts` (default: half-way between levels, i.e. rounding)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(y_true))
    if not len(y_true):
        return float("nan")
    if metric == "rmse":
        return float(np.sqrt(np.mean((y_true - pred) ** 2)))
    graded = to_grades(pred, *grade_cuts(y_true, levels, cuts))
    truth = y_true.astype(int)
    if metric == "qwk":
        from sklearn.metrics import cohen_kappa_score

        if len(np.unique(truth)) < 2 and len(np.unique(graded)) < 2:
            return float("nan")
        return float(cohen_kappa_score(truth, graded, weights="quadratic"))
    if metric == "accuracy":
        return float(np.mean(truth == graded))
    if metric == "balanced_accuracy":
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(truth, graded))
    raise ValueError(f"unknown metric {metric} for one number per image")


def grade_cuts(y_true: np.ndarray, levels: Any, cuts: Any) -> tuple[np.ndarray, np.ndarray]:
    """(levels, cuts) with the defaults filled: whole grades from the truth's range, cuts half-way."""
    if levels is None:
        levels = np.arange(int(np.min(y_true)), int(np.max(y_true)) + 1)
    levels = np.asarray(levels, dtype=int)
    cuts = (levels[:-1] + levels[1:]) / 2 if cuts is None else np.asarray(cuts, dtype=np.float64)
    if len(cuts) != len(levels) - 1:
        raise ValueError(f"{len(levels)} grade levels need {len(levels) - 1} cut-points, got {len(cuts)}")
    return levels, cuts


def to_grades(pred: np.ndarray, levels: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Continuous predictions cut into grades: levels[i] where cuts[i-1] <= pred < cuts[i]."""
    return levels[np.searchsorted(cuts, np.asarray(pred, dtype=np.float64), side="right")]


def constant_score(kind: str, metric: str, truth: np.ndarray, n_classes: int = 0) -> float:
    """The best constant prediction's score under `metric`, for any task kind: class frequencies
    (single-label), the tag set found by adding tags in order of frequency while the score improves
    (multi-label), the mean (RMSE) or the most common grade (ordinal accuracy); QWK and AUC of any
    constant are 0 and 0.5."""
    truth = np.asarray(truth)
    if kind == "single_label":
        return baseline_score(metric, truth, n_classes)
    if kind == "multi_label":
        prevalence = truth.mean(0)
        if metric == "mean_column_auc":
            return score_multilabel(metric, truth, np.tile(prevalence, (len(truth), 1)))
        best, chosen = score_multilabel(metric, truth, np.zeros(truth.shape)), np.zeros(truth.shape[1])
        for j in np.argsort(-prevalence, kind="stable"):
            trial = chosen.copy()
            trial[j] = 1.0
            value = score_multilabel(metric, truth, np.tile(trial, (len(truth), 1)))
            if value > best:
                best, chosen = value, trial
        return best
    values = truth.astype(np.float64)
    if metric == "rmse":
        return score_numeric(metric, values, np.full(len(values), values.mean()))
    common = np.bincount(values.astype(int) - int(values.min())).argmax() + int(values.min())
    return score_numeric(metric, values, np.full(len(values), float(common)))


def baseline_score(metric: str, y_true: np.ndarray, n_classes: int) -> float:
    """The score of always predicting the class frequencies of y_true, the bar any model must clear:
    the majority class under accuracy and F1, 0.5 under ROC AUC, the prior's entropy under log loss."""
    y_true = np.asarray(y_true)
    prior = np.bincount(y_true, minlength=n_classes) / max(len(y_true), 1)
    return score(metric, y_true, np.tile(prior, (len(y_true), 1)))


def is_better(metric: str, new: float, old: float | None) -> bool:
    if old is None or np.isnan(old):
        return True
    return new > old if HIGHER_IS_BETTER[metric] else new < old
