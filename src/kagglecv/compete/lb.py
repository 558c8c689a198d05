"""CV against the public leaderboard: `make lb` (kagglecv lb).

    kagglecv lb -c dogs-vs-cats-redux-kernels-edition

Asks Kaggle (the official client's submissions listing) for the public score of every upload in
submissions/log.csv, matched by ref, and keeps them in runs/<comp>/ledger.csv (ref, run, file,
CV, public score). Then shows CV against public LB per submission, the correlation, and the two
submissions with the best CV: Kaggle lets you pick two finals, and the private leaderboard tends to
follow CV more than the public one. runs/<comp>/runs.html holds the runs table and the scatter.
Writes only ledger.csv and runs.html; reads the upload log, the records and the run folders.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from kagglecv.core.competition import Competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.runs import RUNS_DIR

LEDGER = "ledger.csv"
COLUMNS = ["ref", "run", "file", "cv_mean", "public_score", "status", "submitted", "fetched_at"]
PAGE = 100


def ledger_path(slug: str) -> Path:
    return RUNS_DIR / slug / LEDGER


def read_ledger(slug: str) -> pd.DataFrame:
    path = ledger_path(slug)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        return pd.read_csv(path, dtype={"run": str, "file": str})
    except (OSError, ValueError):
        return pd.DataFrame(columns=COLUMNS)


def _uploads(slug: str) -> pd.DataFrame:
    from kagglecv.compete.upload import DONE, read_log

    rows = [
        r
        for r in read_log()
        if r["competition"] == slug and r["status"] == DONE and str(r["ref"]) not in ("", "0")
    ]
    if not rows:
        raise UserError(
            f"no upload of {slug} in submissions/log.csv yet: `make submit UPLOAD=1` sends one, then `make lb`"
        )
    frame = pd.DataFrame(rows)
    frame["ref"] = frame["ref"].astype(int)
    return frame.drop_duplicates("ref", keep="last")


def _listed_scores(api, slug: str) -> dict[int, tuple[str, str]]:
    """ref -> (public score as Kaggle prints it, status) for the competition's latest submissions."""
    from kagglecv.prepare.sources.kaggle import with_retries

    def call():
        with contextlib.redirect_stdout(io.StringIO()):
            return api.competition_submissions(slug, page_size=PAGE) or []

    listed = with_retries(call, "listing your submissions", slug=slug, api=api)
    out = {}
    for s in listed:
        if s is not None and getattr(s, "ref", None):
            out[int(s.ref)] = (
                str(getattr(s, "public_score", "") or ""),
                status_word(getattr(s, "status", "")),
            )
    return out


def status_word(status) -> str:
    """A submission's status as Kaggle's site words it (complete, pending, error): the client hands
    an enum (SubmissionStatus.COMPLETE), an older ledger may hold its str()."""
    text = getattr(status, "name", None) or str(status or "")
    return "" if text in ("nan", "None") else text.rsplit(".", 1)[-1].lower()


def _as_float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def fetch_public_scores(comp: Competition, api=None) -> pd.DataFrame:
    """Ask Kaggle for the public score of every upload of `comp`; write and return the ledger."""
    from kagglecv.prepare.sources.kaggle import connect

    slug = comp.source.get("competition", comp.slug) if comp.source_kind == "kaggle" else None
    if slug is None:
        raise UserError(
            f"{comp.slug} is not a Kaggle competition (source: {comp.source_kind}): it has no leaderboard"
        )
    uploads = _uploads(slug)
    scores = _listed_scores(api or connect(), slug)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    ledger = pd.DataFrame(
        {
            "ref": uploads["ref"],
            "run": uploads["run"],
            "file": uploads["file"],
            "cv_mean": pd.to_numeric(uploads["cv_mean"], errors="coerce"),
            "public_score": [_as_float(scores.get(r, ("", ""))[0]) for r in uploads["ref"]],
            "status": [scores.get(r, ("", "not listed"))[1] for r in uploads["ref"]],
            "submitted": uploads["time"],
            "fetched_at": now,
        }
    )
    old = read_ledger(comp.slug)
    if not old.empty:  # a score Kaggle no longer lists (older than its page) stays as it was
        keep = old[~old["ref"].isin(ledger["ref"])]
        ledger = pd.concat([keep, ledger], ignore_index=True) if not keep.empty else ledger
    path = ledger_path(comp.slug)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: ledger.to_csv(p, index=False))
    return ledger


def correlation(ledger: pd.DataFrame) -> dict:
    """Pearson and Spearman correlation of CV and public score over the scored submissions."""
    scored = ledger.dropna(subset=["cv_mean", "public_score"])
    if len(scored) < 3 or scored["cv_mean"].nunique() < 2 or scored["public_score"].nunique() < 2:
        return {"n": len(scored)}
    return {
        "n": len(scored),
        "pearson": float(scored["cv_mean"].corr(scored["public_score"])),
        "spearman": float(scored["cv_mean"].corr(scored["public_score"], method="spearman")),
    }


def best_two(ledger: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """The two uploads with the best CV (one per run): the finals to pick on Kaggle."""
    scored = ledger.dropna(subset=["cv_mean"]).sort_values("cv_mean", ascending=not higher_is_better)
    return scored.drop_duplicates("run").head(2)


def ledger_table(slug: str, ledger: pd.DataFrame, metric: str, finals: pd.DataFrame) -> Table:
    table = Table(title=f"{escape(slug)} · CV vs public LB ({escape(metric)})", title_justify="left")
    for col in ("ref", "run", "CV", "public LB", "status", "submitted"):
        table.add_column(col, justify="right" if col in ("ref", "CV", "public LB") else "left")
    for r in ledger.sort_values("ref").to_dict("records"):
        mark = " [bold green]← final[/]" if r["ref"] in set(finals["ref"]) else ""
        table.add_row(
            str(r["ref"]),
            escape(str(r["run"])) + mark,
            "" if pd.isna(r["cv_mean"]) else f"{r['cv_mean']:.4f}",
            "" if pd.isna(r["public_score"]) else f"{r['public_score']:.5f}",
            escape(status_word(r["status"])),
            escape(str(r["submitted"])),
        )
    return table


def scatter_png(ledger: pd.DataFrame, metric: str) -> bytes | None:
    scored = ledger.dropna(subset=["cv_mean", "public_score"])
    if scored.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.scatter(scored["cv_mean"], scored["public_score"])
    for r in scored.itertuples():
        ax.annotate(
            str(r.ref), (r.cv_mean, r.public_score), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    lo = float(np.nanmin([scored["cv_mean"].min(), scored["public_score"].min()]))
    hi = float(np.nanmax([scored["cv_mean"].max(), scored["public_score"].max()]))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel(f"CV {metric}")
    ax.set_ylabel(f"public LB {metric}")
    ax.set_title("CV vs public leaderboard (ref labels)")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def show_lb(comp: Competition) -> pd.DataFrame:
    """`kagglecv lb`: fetch, then CV against public LB, the correlation and the two finals."""
    from kagglecv.core.metrics import HIGHER_IS_BETTER

    ledger = fetch_public_scores(comp)
    finals = best_two(ledger, HIGHER_IS_BETTER[comp.metric])
    console.print(ledger_table(comp.slug, ledger, comp.metric, finals))
    corr = correlation(ledger)
    if "pearson" in corr:
        console.print(
            f"CV vs public LB: Pearson {corr['pearson']:.3f}, Spearman {corr['spearman']:.3f} ({corr['n']} scored)"
        )
    refs = ", ".join(f"ref {r} ({run})" for r, run in zip(finals["ref"], finals["run"], strict=True))
    console.print(f"best CV, to pick as your two finals on Kaggle: {refs}")
    console.print(f"-> {ledger_path(comp.slug)}  (`make runs` shows public LB beside CV)")
    return ledger
