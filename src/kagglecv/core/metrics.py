"""Competition metrics on (true class indices, probabilities N x C). One code path scores both
out-of-fold predictions and submission files (which are first turned back into probabilities)."""

from __future__ import annotations

import numpy as np

# metric -> whether higher is better
HIGHER_IS_BETTER = {"accuracy": True, "f1_micro": True, "roc_auc": True, "log_loss": False}


def score(metric: str, y_true: np.ndarray, probs: np.ndarray, positive: int = 1) -> float:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    if metric == "accuracy":
        return float(np.mean(y_true == probs.argmax(1))) if len(y_true) else float("nan")
    # scikit-learn's metrics take 1.4 s to import: only where they are needed, not in every process
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    if metric == "f1_micro":
        return float(f1_score(y_true, probs.argmax(1), average="micro"))
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
