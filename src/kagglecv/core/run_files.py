"""The files of a run or blend folder that later stages read back: the test-prediction cache and a
blend's weights. They live here, below every stage, because a stage earlier in the flow reads them
too: pseudo-labels (train) learn from a finished run's or blend's cached test predictions.

    cached = read_test_cache(run_dir)                     # {"probs", "images", "classes", ...} or None
    if is_blend(run_dir):
        spec = read_blend(run_dir)                        # members, weights, metric
        probs = blend_test_probs(spec, [member probs...])  # what the blend submits (ranks for ROC AUC)
        sure = blend_probabilities(spec, [member probs...])  # probabilities, for pseudo-labels

`make submit` writes test_probs.npz (predict/test_set.py) and tta_oof.json (the TTA plan chosen on
OOF, predict/tta.py); `make blend` writes blend.json (compete/blend.py). Both are written atomically; the cache is a cache (a read-only or full run
folder only costs it), the blend file is the blend.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from kagglecv.core import json_record as jr
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write, disk_error
from kagglecv.core.names import is_plain_name

TEST_CACHE = "test_probs.npz"
TTA_PLAN = "tta_oof.json"
BLEND_FILE = "blend.json"
BLEND_PREFIX = "blend-"


def read_test_cache(run_dir: Path, key: str | None = None) -> dict | None:
    """The cached test predictions (probs, images, classes, flips, folds), or None when absent,
    unreadable or (given `key`) made for other images, flips or folds."""
    try:
        with np.load(run_dir / TEST_CACHE, allow_pickle=False) as z:
            cached = {k: z[k] for k in z.files}
        meta = json.loads(str(cached.pop("meta")))
    except (OSError, ValueError, KeyError):
        return None
    if key is not None and meta.get("key") != key:
        return None
    return {**meta, "probs": cached["probs"]}


def write_test_cache(run_dir: Path, probs: np.ndarray, meta: dict) -> None:
    """Atomically; a run folder that cannot take it (read-only, full) only costs the cache."""
    try:
        atomic_write(
            run_dir / TEST_CACHE, lambda p: np.savez(p, probs=probs, meta=np.array(json.dumps(meta)))
        )
    except OSError as e:
        why = disk_error(e)
        if why is None:
            raise
        console.print(f"[yellow]warning:[/] test predictions not cached ({why})")


def is_blend(run_dir: Path) -> bool:
    return (run_dir / BLEND_FILE).exists()


def read_blend(run_dir: Path, *, current: bool = False) -> dict:
    """blend.json; with `current`, refused in one line when a member was trained again since the fit."""
    try:
        spec = json.loads((run_dir / BLEND_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir / BLEND_FILE} is unreadable ({e}); run `make blend` again") from None
    if current:
        check_fingerprints(run_dir, spec)
    return spec


def fingerprint(run_dir: Path) -> dict:
    """What a blend records of each member when it is fitted: retraining the run under its name
    (or gathering it again) changes both."""
    try:
        finished = json.loads((run_dir / "summary.json").read_text()).get("finished_at")
    except (OSError, ValueError, AttributeError):
        finished = None
    try:
        oof = hashlib.sha256((run_dir / "oof.csv").read_bytes()).hexdigest()
    except OSError:
        oof = None
    return {"finished_at": finished, "oof_sha256": oof}


def check_fingerprints(blend_dir: Path, spec: dict) -> None:
    """One line when a member is no longer the run the blend was fitted on (trained again under its
    name): its weights and CV belong to the old run. Blends from before fingerprints: not checked."""
    prints = spec.get("fingerprints")
    if not isinstance(prints, dict):
        return
    members = [str(m) for m in spec.get("members", [])]
    for name in members:
        member = blend_dir.parent / name
        if is_plain_name(name) and name in prints and member.is_dir() and fingerprint(member) != prints[name]:
            raise UserError(
                f"blend {blend_dir.name} was fitted on an earlier run {name} (it was trained or gathered "
                f'again since): its weights and CV are stale; blend again: `make blend RUNS="{" ".join(members)}"`'
            )


def to_ranks(probs: np.ndarray) -> np.ndarray:
    """Per-class ranks scaled to [0, 1]: what rank averaging averages (ROC AUC sees only order)."""
    from scipy.stats import rankdata

    return np.stack([(rankdata(col) - 1) / max(len(col) - 1, 1) for col in probs.T], axis=1)


def member_inputs(metric: str, probs: list[np.ndarray]) -> list[np.ndarray]:
    """What a blend averages for this metric: ranks for ROC AUC, else the probabilities."""
    return [to_ranks(p) for p in probs] if metric == "roc_auc" else list(probs)


def combine(inputs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return sum(w * p for w, p in zip(weights, inputs, strict=True))


def blend_test_probs(spec: dict, member_probs: list[np.ndarray]) -> np.ndarray:
    """The test-set blend from each member's test probabilities (same order as spec['members']): what
    the blend submits. For ROC AUC these are averaged ranks, an order and no probability."""
    return combine(member_inputs(spec["metric"], member_probs), np.asarray(spec["weights"]))


def blend_probabilities(spec: dict, member_probs: list[np.ndarray]) -> np.ndarray:
    """The members' probabilities averaged with the blend's weights, whatever the metric: where a
    confidence is needed (pseudo-labels), since a rank blend's scores say only where an image ranks,
    and its top share reaches 1 however unsure every member is."""
    return combine(list(member_probs), np.asarray(spec["weights"]))


@dataclass(frozen=True, kw_only=True)
class TTAPlan(jr.JsonRecord):
    """Which test-time views to average: chosen on OOF (tta_oof.json), recorded by submit, read by
    prediction, the export and the report. The fields in the order the file has always listed them."""

    WHAT: ClassVar[str] = TTA_PLAN
    READERS: ClassVar[dict[str, jr.Reader]] = {
        "key": jr.text,
        "name": jr.text,
        "flips": jr.str_list,
        "scales": jr.floats,
        "scores": jr.scores,
        "metric": jr.text,
    }

    key: str = ""  # the fold checkpoints it was chosen for: another key means choose again
    name: str  # the candidate set, e.g. "hflip+scale1.15"
    flips: list[str] = field(default_factory=list)
    scales: list[float] = field(default_factory=lambda: [1.0])
    scores: dict[str, float] = field(default_factory=dict)  # every candidate's OOF score
    metric: str = ""
    extra: dict = field(default_factory=dict)  # keys this build does not know, kept as they were

    @property
    def extra_scales(self) -> list[float]:
        return [s for s in self.scales if s != 1.0]

    def record(self) -> dict:
        """What a submission record keeps of it."""
        return {"name": self.name, "flips": self.flips, "scales": self.scales, "scores": self.scores}


def read_tta_plan(run_dir: Path) -> TTAPlan | None:
    """The TTA plan cached in a run folder, or None when it is absent or unreadable."""
    try:
        return TTAPlan.from_json(json.loads((run_dir / TTA_PLAN).read_text()))
    except (OSError, ValueError):  # absent, not JSON, or not a plan (json_record says why)
        return None
