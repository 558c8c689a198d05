"""The task kind: what one training example's target is, read once from the competition YAML.

    task: {kind: multi_label, loss: bce}          # planet, plant-pathology-2021, ranzcr
    task: {kind: ordinal, target_range: [0, 4]}   # aptos2019 under QWK
    task: {kind: regression, target_range: [1, 100], loss: huber}   # pawpularity under RMSE

Every later stage asks this object (which head and loss, how a prediction becomes a decision, which
metrics make sense) instead of assuming one softmax over one label column. A YAML without `task:` is
single-label, as every competition file written before the kinds existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kagglecv.core.errors import UserError

TASK_KINDS = ("single_label", "multi_label", "ordinal", "regression")
LOSSES = {
    "single_label": ("ce",),
    "multi_label": ("bce", "asl"),  # asl: asymmetric loss (focuses on the hard negatives of rare tags)
    "ordinal": ("mse", "huber"),  # a regression on the grade, cut into grades by fitted cut-points
    "regression": ("mse", "huber"),  # on the standardised target
}
# which metric (core/metrics.py) can score which kind: QWK on tags, or accuracy on a float, cannot
METRIC_KINDS = {
    "accuracy": ("single_label", "ordinal"),
    "balanced_accuracy": ("single_label", "ordinal"),
    "log_loss": ("single_label",),
    "roc_auc": ("single_label",),
    "f1_micro": ("single_label", "multi_label"),
    "f1_macro": ("single_label", "multi_label"),
    "f2_samples": ("multi_label",),
    "mean_column_auc": ("single_label", "multi_label"),
    "qwk": ("ordinal",),
    "rmse": ("ordinal", "regression"),
}


@dataclass(frozen=True)
class Task:
    """The target's kind plus what the kind needs: a loss from LOSSES[kind]; for ordinal and
    regression the target's closed range (predictions are clipped to it, values outside it are a
    data error); `group_column`, a train CSV column whose rows must share a fold (PatientID)."""

    kind: str = "single_label"
    loss: str = ""  # empty: the kind's first loss
    target_range: tuple[float, float] | None = None
    group_column: str | None = None

    @property
    def head_loss(self) -> str:
        return self.loss or LOSSES[self.kind][0]

    @property
    def is_classification(self) -> bool:
        """One output per class (softmax or sigmoid), as opposed to one number per image."""
        return self.kind in ("single_label", "multi_label")

    def check_metric(self, metric: str, where: str) -> None:
        kinds = METRIC_KINDS.get(metric)
        if kinds is None:
            raise UserError(f"{where}: metric must be one of {', '.join(METRIC_KINDS)}, got {metric!r}")
        if self.kind not in kinds:
            fits = ", ".join(m for m, k in METRIC_KINDS.items() if self.kind in k)
            raise UserError(
                f"{where}: metric {metric} does not score a task of kind {self.kind}; one of {fits} does"
            )

    def check_targets(self, values: Any, where: str) -> None:
        """Ordinal and regression targets: numbers, none missing, inside target_range."""
        if self.kind not in ("ordinal", "regression"):
            return
        import numpy as np

        arr = np.asarray(values, dtype=object)
        try:
            nums = arr.astype(np.float64)
        except (TypeError, ValueError):
            bad = next(v for v in arr if not _is_number(v))
            raise UserError(f"{where}: target {bad!r} is not a number ({self.kind} task)") from None
        if np.isnan(nums).any():
            raise UserError(f"{where}: {int(np.isnan(nums).sum())} target(s) are missing (NaN)")
        if self.kind == "ordinal" and not np.all(nums == np.round(nums)):
            raise UserError(
                f"{where}: ordinal grades must be whole numbers, got {nums[nums != np.round(nums)][0]}"
            )
        if self.target_range is not None:
            lo, hi = self.target_range
            out = nums[(nums < lo) | (nums > hi)]
            if len(out):
                raise UserError(
                    f"{where}: {len(out)} target(s) outside task.target_range [{lo}, {hi}], e.g. {out[0]:g}; "
                    "fix the data or widen the range"
                )


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_task(values: Any, where: str) -> Task:
    """The `task:` block of a competition file, checked: a known kind, a loss that kind trains with,
    a range only where targets are numbers (low below high)."""
    if isinstance(values, str):  # `task: ordinal` for a kind with every default
        values = {"kind": values}
    if values is not None and not isinstance(values, dict):
        raise UserError(f"{where}: task must be a kind (task: ordinal) or a mapping, got {values!r}")
    values = dict(values or {})
    unknown = set(values) - {"kind", "loss", "target_range", "group_column"}
    if unknown:
        raise UserError(f"{where}: task has unknown key(s) {', '.join(sorted(unknown))}")
    kind = values.get("kind", "single_label")
    if kind not in TASK_KINDS:
        raise UserError(f"{where}: task.kind must be one of {', '.join(TASK_KINDS)}, got {kind!r}")
    loss = values.get("loss") or ""
    if loss and loss not in LOSSES[kind]:
        raise UserError(
            f"{where}: task.loss for {kind} must be one of {', '.join(LOSSES[kind])}, got {loss!r}"
        )
    target_range = values.get("target_range")
    if target_range is not None:
        if kind not in ("ordinal", "regression"):
            raise UserError(f"{where}: task.target_range applies to ordinal and regression tasks only")
        ok = isinstance(target_range, list | tuple) and len(target_range) == 2
        if not ok or not all(_is_number(v) and not isinstance(v, bool) for v in target_range):
            raise UserError(f"{where}: task.target_range must be [low, high], got {target_range!r}")
        target_range = (float(target_range[0]), float(target_range[1]))
        if target_range[0] >= target_range[1]:
            raise UserError(f"{where}: task.target_range low must be below high, got {list(target_range)}")
    group = values.get("group_column")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise UserError(f"{where}: task.group_column must be a column name, got {group!r}")
    return Task(kind=kind, loss=loss, target_range=target_range, group_column=group)
