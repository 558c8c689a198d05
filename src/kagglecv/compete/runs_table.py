"""Every run of a competition in one table, best CV first: `make runs` (kagglecv runs).

    kagglecv runs -c digits-small

Reads run folders (config.yaml, summary.json, finished folds, the run lock), blend folders, the
submission records in submissions/ (local test score) and runs/<comp>/ledger.csv (public LB score,
once `make lb` fetched it);
writes nothing but runs/<comp>/runs.csv (the same table as a CSV) and runs.html (the table, with
CV against public LB where `make lb` fetched it). No torch here: it starts fast.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import yaml
from rich.markup import escape
from rich.table import Table

from kagglecv.compete.records import SUBMISSIONS_DIR
from kagglecv.core.files import atomic_write
from kagglecv.core.locks import LOCK_NAME, is_locked
from kagglecv.core.run_files import is_blend
from kagglecv.core.runs import (
    RUNS_DIR,
    SUMMARY,
    finished_at,
    finished_folds,
    is_finished,
    n_folds_of,
    run_folders,
)

COLUMNS = [
    "run", "model", "img_size", "epochs", "folds", "cv_mean", "cv_std", "oof_score",
    "test_score", "public_lb", "seconds", "state", "pseudo",
]  # fmt: skip
WHOLE = ("img_size", "epochs")  # whole numbers


def submission_records(slug: str) -> list[dict]:
    """submissions/<slug>-*.json written by `make submit` (and updated by `make lb`), oldest first."""
    out = []
    for path in sorted(SUBMISSIONS_DIR.glob(f"{slug}-*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record being written or damaged: the table simply lacks its scores
        if isinstance(rec, dict) and rec.get("competition", slug) == slug:
            rec.setdefault("record", path.name)
            out.append(rec)
    return out


def _latest(records: list[dict], run: str, key: str):
    values = [r.get(key) for r in records if r.get("run") == run and r.get(key) is not None]
    return values[-1] if values else None


def _written(record: dict) -> float | None:
    try:
        return time.mktime(time.strptime(str(record["written_at"]), "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, ValueError, OverflowError):
        return None


def _fitted_since(records: list[dict], run_dir: Path) -> list[dict]:
    """A blend's submission records from its current weights: blending again (new weights, same id)
    leaves the earlier submission's test score to the earlier blend."""
    if not is_blend(run_dir):
        return records
    fitted = int(finished_at(run_dir))
    return [r for r in records if r.get("run") != run_dir.name or (_written(r) or fitted) >= fitted]


def _config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _state(run_dir: Path) -> str:
    """running, or finished as RESUME=1 and the default run see it (core/runs.is_finished: the folds
    it was asked for; train_folds=2 of 5 is finished, its folds column says 2/5), or unfinished."""
    if is_locked(run_dir / LOCK_NAME):
        return "running"
    return "finished" if is_finished(run_dir) else "unfinished"


def _public(ledger: pd.DataFrame, run: str):
    scored = ledger[(ledger["run"] == run) & ledger["public_score"].notna()] if not ledger.empty else ledger
    return None if scored.empty else float(scored.sort_values("ref")["public_score"].iloc[-1])


def run_row(run_dir: Path, records: list[dict], n_folds: int | None, ledger: pd.DataFrame) -> dict:
    summary = None
    if (run_dir / SUMMARY).exists():
        try:
            summary = json.loads((run_dir / SUMMARY).read_text())
        except (OSError, ValueError):
            summary = None
    cfg = _config(run_dir)
    s = summary or {}
    done = len(finished_folds(run_dir)) if s.get("kind") != "blend" else s.get("folds", 0)
    n_folds = n_folds_of(run_dir) or n_folds  # the split the run started on, not today's n_folds
    total = n_folds or s.get("folds") or done
    epochs = (cfg.get("freeze_epochs") or 0) + (cfg.get("epochs") or 0) if cfg else None
    return {
        "run": run_dir.name,
        "model": s.get("model") or cfg.get("model"),
        "img_size": s.get("img_size") or cfg.get("img_size"),
        "epochs": epochs or None,
        "folds": f"{done}/{total}",
        "cv_mean": s.get("cv_mean"),
        "cv_std": s.get("cv_std"),
        "oof_score": s.get("oof_score"),
        "test_score": _latest(_fitted_since(records, run_dir), run_dir.name, "test_score"),
        "public_lb": _public(ledger, run_dir.name),
        "seconds": s.get("seconds"),
        "state": _state(run_dir),
        "pseudo": cfg.get("pseudo") or "",
    }


def runs_frame(slug: str, higher_is_better: bool, n_folds: int | None = None) -> pd.DataFrame:
    """One row per run folder of `slug`, best CV first (runs without a CV last)."""
    base = RUNS_DIR / slug
    from kagglecv.compete.lb import read_ledger

    records, ledger = submission_records(slug), read_ledger(slug)
    # a folder whose name breaks the name rule is skipped with a line (core/runs.run_folders)
    dirs = run_folders(base, "config.yaml", SUMMARY)
    frame = pd.DataFrame([run_row(p, records, n_folds, ledger) for p in dirs], columns=COLUMNS)
    if frame.empty:
        return frame
    for col in WHOLE:  # a blend's None would make the column float: 32.0 in runs.csv, 32.0000 shown
        frame[col] = pd.to_numeric(frame[col], errors="coerce").round().astype("Int64")
    key = frame["cv_mean"].astype(float)
    frame["_key"] = key if higher_is_better else -key
    return frame.sort_values(["_key", "run"], ascending=[False, True], na_position="last").drop(
        columns="_key"
    )


def _whole(v, blend: bool) -> str:
    """A size or epoch count: a whole number, blank where unknown, '-' for a blend (it has none)."""
    if blend:
        return "-"
    return "" if v is None or pd.isna(v) else str(int(v))


def _num(v, spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(v, spec) if isinstance(v, (int, float)) else escape(str(v))


STATE_STYLE = {"finished": "green", "running": "cyan", "unfinished": "yellow"}


def runs_table(slug: str, frame: pd.DataFrame, metric: str) -> Table:
    table = Table(title=f"{escape(slug)} · runs (best CV first, {escape(metric)})", title_justify="left")
    for col in ("run", "model", "size", "ep", "folds", "CV", "OOF", "test", "public LB", "time", "state"):
        table.add_column(col, justify="left" if col in ("run", "model", "state") else "right")
    for r in frame.to_dict("records"):
        cv = (
            "" if r["cv_mean"] is None or pd.isna(r["cv_mean"]) else f"{r['cv_mean']:.4f} ± {r['cv_std']:.4f}"
        )
        name = escape(r["run"]) + (" [dim](pseudo)[/]" if r["pseudo"] else "")
        style = STATE_STYLE.get(r["state"], "")
        blend = is_blend(RUNS_DIR / slug / r["run"])
        table.add_row(
            name,
            escape(str(r["model"] or "")),
            _whole(r["img_size"], blend),
            _whole(r["epochs"], blend),
            r["folds"],
            cv,
            _num(r["oof_score"]),
            _num(r["test_score"]),
            _num(r["public_lb"], ".5f"),
            "" if r["seconds"] is None or pd.isna(r["seconds"]) else f"{r['seconds']:.0f}s",
            f"[{style}]{r['state']}[/]" if style else r["state"],
        )
    return table


def write_runs_csv(slug: str, frame: pd.DataFrame) -> Path:
    path = RUNS_DIR / slug / "runs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: frame.to_csv(p, index=False))
    return path


def write_runs_html(slug: str, frame: pd.DataFrame, metric: str, scatter: bytes | None, corr: dict) -> Path:
    """runs/<comp>/runs.html: the runs table, and CV against public LB where `make lb` fetched it."""
    import base64
    import html

    cols = [c for c in COLUMNS if c != "pseudo"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>"
        for r in frame.to_dict("records")
    )
    if scatter:
        img = base64.b64encode(scatter).decode()
        said = (
            f"Pearson {corr['pearson']:.3f}, Spearman {corr['spearman']:.3f} over {corr['n']} submissions"
            if "pearson" in corr
            else f"{corr.get('n', 0)} scored submission(s): too few for a correlation"
        )
        lb = f'<h2>CV vs public LB</h2><p>{html.escape(said)}</p><img alt="CV vs public LB" src="data:image/png;base64,{img}">'
    else:
        lb = "<p>No public scores yet: `make submit UPLOAD=1`, then `make lb`.</p>"
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(slug)} runs</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
        "text-align:right}th{background:#f4f4f4}</style>"
        f"<h1>{html.escape(slug)}: runs, best CV first ({html.escape(metric)})</h1>"
        f"<table><tr>{head}</tr>{body}</table>{lb}"
    )
    path = RUNS_DIR / slug / "runs.html"
    atomic_write(path, lambda p: p.write_text(page))
    return path


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def show_runs(comp) -> None:
    """`kagglecv runs`: the table in the terminal, runs.csv and runs.html beside the runs."""
    from kagglecv.compete.lb import correlation, read_ledger, scatter_png
    from kagglecv.core.console import console
    from kagglecv.core.errors import UserError
    from kagglecv.core.metrics import HIGHER_IS_BETTER

    frame = runs_frame(comp.slug, HIGHER_IS_BETTER[comp.metric], comp.n_folds)
    if frame.empty:
        raise UserError(
            f"no runs of {comp.slug} yet in runs/{comp.slug}/: `make train COMP={comp.slug}` starts one"
        )
    console.print(runs_table(comp.slug, frame, comp.metric))
    ledger = read_ledger(comp.slug)
    html = write_runs_html(
        comp.slug, frame, comp.metric, scatter_png(ledger, comp.metric), correlation(ledger)
    )
    console.print(f"-> {write_runs_csv(comp.slug, frame)}, {html}")
