"""What the model learned and where it fails: one self-contained HTML page per run.

    kagglecv report [RUN] [--comp digits-demo]     # also written after `kagglecv train` / `demo`

Reads the run folder (summary.json, config.yaml, metrics.csv, oof.csv, lr_find.json), the training
images under data/<comp>/ and, for the test score, the run's latest submission record under
submissions/. Writes into the run folder: report.html (every figure embedded as a base64 PNG, so
the file can be mailed or opened anywhere), figures/*.png (the same figures, one file each),
confusion_matrix.csv and suspect_labels.csv. With k-fold every training image has an out-of-fold
prediction, so the confusion matrix, the top losses and the suspect labels cover the whole training
set, not one split. The numbers come from analysis.py, the figures from core/figures.py.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from kagglecv.core.console import console
from kagglecv.core.figures import (
    CM_MAX_CLASSES,
    confusion_subset,
    fig_confusion,
    fig_curves,
    fig_image_grid,
    fig_lr_find,
    img_tag,
    png,
    use_fonts,
)
from kagglecv.core.files import atomic_write
from kagglecv.core.run_files import read_tta_plan
from kagglecv.report.analysis import (
    GRID_IMAGES,
    SUSPECT_MIN_P_OTHER,
    Run,
    best_epochs,
    confusion,
    cv_rows,
    load_run,
    most_confused,
    near_chance,
    per_class,
    suspect_labels,
    top_losses,
)

__all__ = ["CM_MAX_CLASSES", "cv_table", "load_run", "write_report", "confusion_subset", "most_confused"]

REPORT = "report.html"
LOOK_BUDGET_S = 60  # `make report` builds the look-inside section by default when it fits this
SUSPECTS = "suspect_labels.csv"
FIGURES = "figures"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222} h1{font-size:1.5em} h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.2em .7em;border-bottom:1px solid #eee;
text-align:right} th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em} img{max-width:100%;height:auto}
.note{color:#666} .row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.scroll{max-height:28em;overflow:auto;display:inline-block} .big{font-size:1.2em}
.row img{max-width:calc(50% - 1em)} pre.cfg{columns:3 16em}
"""


def _table(df: pd.DataFrame, floats: str = "{:.4f}") -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float | np.floating):
            return floats.format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


class _Figures:
    """Saves each figure as figures/<name>.png and returns it as an <img> for the page."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: list[str] = []
        folder.mkdir(exist_ok=True)

    def __call__(self, name: str, fig) -> str:
        data = png(fig)
        atomic_write(self.folder / f"{name}.png", lambda p: p.write_bytes(data))
        self.names.append(name)
        return img_tag(data, name)


def latest_test_score(run: Run) -> float | None:
    """The local test score of the run's latest submission (its record in submissions/), if any."""
    from kagglecv.compete.records import latest_record

    record = latest_record(run.dir, str(run.summary.get("competition", "")))
    return record.get("test_score") if record else None


def _tta_table(run: Run) -> str:
    """The TTA candidates scored on the OOF images (tta_oof.json, written when the run is submitted)."""
    plan = read_tta_plan(run.dir)
    if plan is None:
        return ""
    rows = pd.DataFrame(
        [{"TTA set": k, f"OOF {plan.metric}": v, "used": "✓" if k == plan.name else ""}
         for k, v in plan.scores.items()]
    )  # fmt: skip
    return (
        "<h2>Test-time augmentation, chosen on OOF</h2><p class='note'>Each fold model predicted the "
        "images it held out under each set; submit uses the best, and plain prediction unless a set beats it.</p>"
        + _table(rows)
    )


def _pseudo_note(run: Run) -> str:
    """What pseudo-labels the run trained with (pseudo.json, written by train), or nothing."""
    try:
        p = json.loads((run.dir / "pseudo.json").read_text())
    except (OSError, ValueError):
        return ""
    per = ", ".join(f"{html.escape(str(c))} {n}" for c, n in p.get("per_class", {}).items() if n)
    return (
        f"<p class='note'>pseudo-labels: {p.get('added')} of {p.get('of')} test images predicted by "
        f"{html.escape(str(p.get('source')))} with p ≥ {p.get('threshold')} joined every training split "
        f"({per or 'none'}); the OOF is therefore not independent of that run.</p>"
    )


def _made_note(run: Run) -> str:
    """How the OOF predictions were made: a run's recipe and hardware, or a blend's members."""
    s, n = run.summary, f"{len(run.y)} out-of-fold images · {len(run.classes)} classes"
    if s.get("kind") == "blend":  # no lr, size or epochs of its own
        parts = zip(s.get("members", []), s.get("weights", []), strict=False)
        weights = ", ".join(f"{html.escape(str(m))} {_fmt(w, '.2f')}" for m, w in parts)
        return (
            f"<p class='note'>blend of {weights} (weights fitted on their out-of-fold predictions; each "
            f"member's own report shows its curves and models) · {n}</p>"
        )
    return (
        f"<p class='note'>lr {_fmt(s.get('lr'), '.2e')} · {s.get('img_size')} px · {n} · trained in "
        f"{_fmt(s.get('seconds'), '.0f')} s on {html.escape(str(s.get('device')))}</p>"
    )


def _header(run: Run, test: float | None) -> str:
    s = run.summary
    metric = s.get("metric", "metric")
    test_txt = (
        f"test {html.escape(metric)} <b>{_fmt(test)}</b>"
        if test is not None
        else "no test score yet (<code>make submit</code> scores it where labels are known)"
    )
    return (
        f"<h1>{html.escape(str(s.get('competition')))} · {html.escape(str(s.get('run', run.dir.name)))}</h1>"
        f"<p class='big'>{html.escape(str(s.get('model')))} · CV {html.escape(metric)} <b>{_fmt(s.get('cv_mean'))}</b> ± "
        f"{_fmt(s.get('cv_std'))} over {s.get('folds')} folds · OOF {_fmt(s.get('oof_score'))} · {test_txt}</p>"
        + _made_note(run)
        + _pseudo_note(run)
        + "<h2>Cross-validation</h2>"
        + _table(cv_rows(run))
        + _tta_table(run)
        + "<h2>Config</h2>"
        + (
            f"<pre class='cfg'>{html.escape(run.config_text)}</pre>"
            if run.config_text
            else "<p class='note'>config.yaml not found in the run folder.</p>"
        )
    )


def _lr_and_curves(run: Run, save: _Figures) -> str:
    s = run.summary
    sec = "<h2>Learning-rate range test</h2>"
    if run.lr_find:
        chosen = s.get("lr") if isinstance(s.get("lr"), int | float) else run.lr_find.get("chosen")
        sec += save("lr_find", fig_lr_find(run.lr_find, chosen))
        sec += (
            "<p class='note'>Loss while the learning rate grows exponentially. The suggestion sits in the "
            "valley where the loss falls fastest; the green line is the LR this run trained with.</p>"
        )
    else:
        sec += (
            f"<p class='note'>No range test in this run: lr was fixed at {_fmt(s.get('lr'), '.2e')}. "
            "Train with <code>lr=auto</code> to see it.</p>"
        )
    sec += "<h2>Training curves</h2>"
    if run.metrics is None:
        return sec + "<p class='note'>No usable metrics.csv in the run folder.</p>"
    freeze = int(run.config.get("freeze_epochs") or 0)
    sec += save("curves", fig_curves(run.metrics, best_epochs(s), s.get("metric", "metric"), freeze))
    return sec + (
        "<p class='note'>Dashed: train loss; solid: validation. ★ the epoch whose weights were kept. "
        "Validation loss rising while train loss falls means more epochs overfit."
        + (" Grey band: head-only epochs (freeze_epochs)." if freeze else "")
        + "</p>"
    )


def _confusion(run: Run, cm: np.ndarray, pairs: pd.DataFrame, save: _Figures) -> str:
    idx = confusion_subset(cm)
    sec = (
        "<h2>Confusion matrix (out-of-fold)</h2><div class='row'>"
        + save("confusion_counts", fig_confusion(cm, run.classes, idx, normalize=False))
        + save("confusion_normalized", fig_confusion(cm, run.classes, idx, normalize=True))
        + "</div>"
    )
    frame = pd.DataFrame(cm, index=run.classes, columns=run.classes).rename_axis("true \\ predicted")
    atomic_write(run.dir / "confusion_matrix.csv", lambda p: frame.to_csv(p))
    if len(idx) < len(run.classes):
        sec += (
            f"<p class='note'>Showing the {len(idx)} of {len(run.classes)} classes with the most errors "
            "(as true or predicted class); the full matrix is in <code>confusion_matrix.csv</code>.</p>"
        )
    shares = pairs.assign(**{"share of true": pairs["share of true"].map("{:.1%}".format)})
    sec += "<h3>Most confused pairs</h3>" + (
        _table(shares) if len(pairs) else "<p>No out-of-fold errors.</p>"
    )
    pc = per_class(run)
    weighted = np.average(pc["f1"], weights=pc["support"]) if pc["support"].sum() else 0
    return sec + (
        f"<h2>Per-class precision, recall, F1</h2><p class='note'>Worst F1 first; {len(pc)} classes; "
        f"macro F1 {pc['f1'].mean():.4f}, support-weighted F1 {weighted:.4f}.</p>"
        f"<div class='scroll'>{_table(pc)}</div>"
    )


def _weak_note(run: Run, weak: tuple[float, float] | None) -> str:
    if weak is None:
        return ""
    metric = html.escape(str(run.summary.get("metric", "accuracy")))
    return (
        f"<p class='note'><b>Caution:</b> out-of-fold {metric} {weak[0]:.4f} is close to the majority-class "
        f"baseline's {weak[1]:.4f} (always predicting the training class frequencies); train longer or "
        "better before trusting this list.</p>"
    )


def _images(run: Run, data_dir: Path, suspects: pd.DataFrame, weak, save: _Figures) -> str:
    top = top_losses(run)
    shown = pd.concat([top["image"], suspects["image"].head(GRID_IMAGES)])
    missing = sum(not (data_dir / img).is_file() for img in shown.unique())
    sec = (
        f"<p class='note'>{missing} images were not found under {html.escape(str(data_dir))}/ "
        "(run the report from the project folder, with the data prepared).</p>"
        if missing
        else ""
    )
    sec += (
        "<h2>Top losses</h2><p class='note'>The out-of-fold images whose given label got the least "
        "probability: true label (its probability), prediction (its probability), file. Red: wrong.</p>"
        + save("top_losses", fig_image_grid(top, data_dir, "predicted", "p_predicted"))
    )
    sec += (
        f"<h2>Suspect labels</h2><p class='note'>{len(suspects)} out-of-fold images whose label cleanlab's "
        "confident learning doubts. For each pair of classes it counts the images labelled one that the "
        "model, which never trained on them, confidently gives to the other (as surely as it usually gives "
        f"that class to its own images, capped at {SUSPECT_MIN_P_OTHER:.0%}), and flags that many. Ranked by "
        "p(suggested) − p(label), so the likeliest wrong labels come first; all listed in "
        f"<code>{SUSPECTS}</code>. Look at them: a wrong label teaches the model the wrong thing, a right "
        "one shows a hard case.</p>" + _weak_note(run, weak)
    )
    if len(suspects):
        grid = fig_image_grid(suspects.head(GRID_IMAGES), data_dir, "suggested", "p_suggested")
        sec += save("suspect_labels", grid) + f"<div class='scroll'>{_table(suspects.head(50))}</div>"
    return sec


def _page(run: Run, sections: list[str]) -> str:
    s = run.summary
    title = html.escape(f"{s.get('competition')} · {s.get('run', run.dir.name)} · kagglecv report")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{''.join(sections)}</body></html>\n"
    )


def _look(run: Run, data_dir: Path, look: bool | None) -> str:
    """The look-inside section (galleries, heatmaps, data map): built when `look`, or when None and
    the run is small enough to take under a minute here; otherwise a line saying how to get it."""
    if look is False:
        return ""
    from kagglecv.core.errors import UserError
    from kagglecv.report.look import build_look  # imports torch: only when the section is wanted

    try:
        res = build_look(run.dir, data_dir, run.dir / "look", budget_s=LOOK_BUDGET_S, force=bool(look))
    except UserError as e:
        if look:
            raise
        console.print(f"[yellow]look inside skipped:[/] {escape(str(e))}")
        return f"<h2>Look inside the model</h2><p>Skipped: {html.escape(str(e))}</p>"
    return res.html


def write_report(
    run_dir: Path, data_dir: Path | None = None, show_cv: bool = True, look: bool | None = False
) -> Path:
    """Write report.html, figures/*.png, confusion_matrix.csv and suspect_labels.csv into run_dir;
    print the key tables. `look`: True builds the look-inside section whatever it costs, None only
    when it fits a minute, False never."""
    run = load_run(Path(run_dir))
    data_dir = Path(data_dir) if data_dir else Path("data") / run.summary.get("competition", "")
    use_fonts(run.classes)
    save = _Figures(run.dir / FIGURES)
    cm = confusion(run)
    pairs = most_confused(cm, run.classes)
    suspects = suspect_labels(run)
    atomic_write(run.dir / SUSPECTS, lambda p: suspects.to_csv(p, index=False, float_format="%.4f"))
    weak = near_chance(run)
    test = latest_test_score(run)
    sections = [
        _header(run, test),
        _lr_and_curves(run, save),
        _confusion(run, cm, pairs, save),
        _images(run, data_dir, suspects, weak, save),
        _look(run, data_dir, look),
    ]
    out = run.dir / REPORT
    page = _page(run, sections)
    atomic_write(out, lambda p: p.write_text(page, encoding="utf-8"))
    if show_cv:
        console.print(cv_table(run, test))
    console.print(pairs_table(pairs, len(run.classes)))
    console.print(
        f"[green]✓[/] report -> {escape(str(out))} ({len(save.names)} figures in {escape(str(save.folder))}/); "
        f"{len(suspects)} suspect label{'s' * (len(suspects) != 1)} -> {escape(str(run.dir / SUSPECTS))}"
    )
    if weak is not None:
        metric = escape(str(run.summary.get("metric", "accuracy")))
        console.print(
            f"[yellow]caution:[/] out-of-fold {metric} {weak[0]:.4f} is little or no better than the "
            f"majority-class baseline's {weak[1]:.4f}: the suspect labels say more about the model than "
            "about the labels"
        )
    return out


def cv_table(run: Run, test: float | None = None) -> Table:
    """The CV table printed after training and by `kagglecv report` (every name escaped for rich)."""
    s = run.summary
    metric = str(s.get("metric", "metric"))
    table = Table(
        title=escape(f"{s.get('competition')} · {s.get('run', run.dir.name)}"), title_justify="left"
    )
    for col in ("fold", metric, "best epoch", "val_loss"):
        table.add_column(escape(col), justify="right")
    for r in cv_rows(run).itertuples(index=False):
        best = "" if r[2] is None or pd.isna(r[2]) else str(int(r[2]))  # a blend has no epochs
        table.add_row(str(r[0]), f"{r[1]:.4f}", best, "" if pd.isna(r[4]) else f"{r[4]:.4f}")
    table.add_section()
    table.add_row("CV", f"[bold]{_fmt(s.get('cv_mean'))} ± {_fmt(s.get('cv_std'))}[/]", "", "")
    table.add_row("OOF", _fmt(s.get("oof_score")), "", "")
    if test is not None:
        table.add_row("test", _fmt(test), "", "")
    return table


def pairs_table(pairs: pd.DataFrame, n_classes: int) -> Table:
    table = Table(title=f"most confused pairs (out-of-fold, {n_classes} classes)", title_justify="left")
    for col, just in (("true", "left"), ("predicted", "left"), ("count", "right"), ("share", "right")):
        table.add_column(col, justify=just)
    for r in pairs.itertuples(index=False):
        table.add_row(escape(str(r[0])), escape(str(r[1])), str(r[2]), f"{r[3]:.1%}")
    if not len(pairs):
        table.add_row("none", "", "", "")
    return table
