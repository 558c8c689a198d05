"""Where a run's Kaggle notebook lives and how its answer is judged: shared by the build and dry
run (kernel.py) and by the push, which compares what Kaggle wrote with the local file (kernel_push.py).

    out = kernel_dir(comp, run_dir)                   # kernels/<comp>-<run>/
    short_slug("kagglecv digits-demo 2026...-resnet") # a Kaggle slug for the dataset and notebook
    worst = compare_submissions(got, want, comp)      # ids and order exact, values within VALUE_TOLERANCE
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from kagglecv.core.competition import Competition
from kagglecv.core.errors import UserError

KERNELS_DIR = Path("kernels")
NOTEBOOK_FILE = "kagglecv-notebook.py"
VALUE_TOLERANCE = 1e-5  # max |Δ| between the notebook's and `make submit`'s probabilities


def kernel_dir(comp: Competition, run_dir: Path) -> Path:
    return KERNELS_DIR / f"{comp.slug}-{run_dir.name}"


def short_slug(text: str) -> str:
    """A Kaggle slug (lower-case words, 6..50 characters) for `text`; a long one keeps its start
    and gains a digest, so two runs never share one."""
    import hashlib

    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > 50:
        slug = slug[:41].rstrip("-") + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return slug.ljust(6, "0")


def compare_submissions(got: Path, want: Path, comp: Competition) -> float:
    """The notebook's submission against `make submit`'s: columns, ids and order exactly, numbers
    within VALUE_TOLERANCE, labels exactly. Returns the largest numeric difference."""
    a, b = pd.read_csv(got, dtype=str), pd.read_csv(want, dtype=str)
    where = f"the notebook's submission.csv and {want}"
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        raise UserError(
            f"{where} differ in shape: {list(a.columns)} x {len(a)} vs {list(b.columns)} x {len(b)}"
        )
    ids = comp.submission.id_column
    bad = np.flatnonzero(a[ids].to_numpy() != b[ids].to_numpy())
    if len(bad):
        raise UserError(
            f"{where} list other ids at row {bad[0] + 2}: {a[ids][bad[0]]!r} vs {b[ids][bad[0]]!r}"
        )
    worst = 0.0
    for col in [c for c in a.columns if c != ids]:
        x, y = pd.to_numeric(a[col], errors="coerce"), pd.to_numeric(b[col], errors="coerce")
        numeric = comp.submission.kind in ("probability", "class_probabilities")
        if numeric and not (x.isna().any() or y.isna().any()):
            worst = max(worst, float(np.abs(x.to_numpy() - y.to_numpy()).max()))
            continue
        wrong = np.flatnonzero(a[col].to_numpy() != b[col].to_numpy())
        if len(wrong):
            i = wrong[0]
            raise UserError(f"{where} differ in {col} at row {i + 2} ({a[col][i]!r} vs {b[col][i]!r})")
    if worst > VALUE_TOLERANCE:
        raise UserError(f"{where} differ by up to {worst:.2e} (limit {VALUE_TOLERANCE:.0e})")
    return worst
