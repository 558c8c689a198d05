"""Pseudo-labels: test images that an earlier run (or blend) predicts confidently, added to training.

    make train ARGS="pseudo=<run-or-blend> pseudo_threshold=0.95"

Reads the source's cached test predictions (runs/<comp>/<run>/test_probs.npz, written by
`make submit RUN=<run>`; a blend averages its members' cached probabilities with its weights, also
where it submits averaged ranks (ROC AUC), since a rank is no confidence) and keeps the test images
whose top probability is at least the threshold, labelled with that class. They join every fold's
training split and never a validation split, so each fold is still scored only on real labels; but
a pseudo-labelled image came from a model that saw all the training folds, so the new run's OOF is
not independent of them (make runs marks such runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.names import check_name
from kagglecv.core.runs import RUNS_DIR

PSEUDO_FOLD = -1  # the fold id of pseudo-labelled rows: in no validation split


def source_probs(slug: str, source: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(N x C test probabilities, test image paths relative to data/<comp>/, classes) of a run or blend."""
    from kagglecv.core.run_files import blend_probabilities, is_blend, read_blend, read_test_cache

    run_dir = RUNS_DIR / slug / check_name(source, "pseudo= (a run or blend id)")
    if not run_dir.is_dir():
        raise UserError(
            f"pseudo={source}: no run or blend '{source}' in {RUNS_DIR / slug}/ (`make runs` lists them)"
        )
    members = read_blend(run_dir, current=True)["members"] if is_blend(run_dir) else [source]
    caches = []
    for name in members:
        if not (RUNS_DIR / slug / check_name(name, f"{run_dir}: a blend member")).is_dir():  # deleted since
            raise UserError(
                f"pseudo={source}: blend member run {name} is gone from {RUNS_DIR / slug}/; retrain it "
                f"under that name, or blend again without it (`make blend RUNS=...`) and use that blend"
            )
        cached = read_test_cache(RUNS_DIR / slug / name)
        if cached is None:
            raise UserError(
                f"pseudo={source}: run {name} has no cached test predictions yet; "
                f"`make submit RUN={name}` predicts the test set and caches them"
            )
        caches.append(cached)
    images = caches[0]["images"]
    if any(c["images"] != images for c in caches):
        raise UserError(f"pseudo={source}: its members predicted different test sets; submit each again")
    probs = [np.asarray(c["probs"], dtype=np.float64) for c in caches]
    # probabilities, never what a rank blend submits: its top share ranks near 1 however unsure
    combined = blend_probabilities(read_blend(run_dir), probs) if is_blend(run_dir) else probs[0]
    return combined, images, [str(c) for c in caches[0]["classes"]]


def pseudo_rows(comp, source: str, threshold: float, classes: list[str]) -> pd.DataFrame:
    """image, label, fold (= PSEUDO_FOLD) for the confidently predicted test images."""
    probs, images, src_classes = source_probs(comp.slug, source)
    if src_classes != classes:
        raise UserError(
            f"pseudo={source} predicts other classes than the prepared data has; retrain it first"
        )
    ok = ~np.isnan(probs).any(1)
    top = np.where(ok, np.nan_to_num(probs).max(1), 0.0)
    keep = top >= threshold
    rows = pd.DataFrame(
        {
            "image": [images[i] for i in np.flatnonzero(keep)],
            "label": [classes[int(probs[i].argmax())] for i in np.flatnonzero(keep)],
            "fold": PSEUDO_FOLD,
        }
    )
    missing = [p for p in rows["image"] if not (comp.data_dir / p).exists()]
    if missing:
        raise UserError(
            f"pseudo={source}: {len(missing)} test images are gone (e.g. {missing[0]}); `make data` again"
        )
    return rows


def report_pseudo(rows: pd.DataFrame, source: str, threshold: float, n_test: int, classes: list[str]) -> dict:
    """Print how many test images joined each class; return what the run folder records."""
    counts = rows["label"].value_counts().reindex(classes, fill_value=0)
    table = Table(title=f"pseudo-labels from {escape(source)} (p ≥ {threshold:g})", title_justify="left")
    table.add_column("class")
    table.add_column("test images added", justify="right")
    for c, n in counts.items():
        table.add_row(escape(str(c)), str(int(n)))
    table.add_section()
    table.add_row("all", f"{len(rows)} of {n_test}")
    console.print(table)
    if rows.empty:
        console.print(
            f"[yellow]warning:[/] no test image reaches p ≥ {threshold:g}; training without pseudo-labels"
        )
    return {"source": source, "threshold": threshold, "added": int(len(rows)), "of": n_test,
            "per_class": {str(c): int(n) for c, n in counts.items()}}  # fmt: skip


def write_pseudo_record(run_dir: Path, record: dict) -> None:
    from kagglecv.core.files import atomic_write

    atomic_write(run_dir / "pseudo.json", lambda p: p.write_text(json.dumps(record, indent=2)))
