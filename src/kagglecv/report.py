"""What the model learned and where it fails: one self-contained HTML page per run.

    kagglecv report [RUN] [--comp digits-demo]     # also written after `kagglecv train` / `demo`

Reads only the run folder (summary.json, config.yaml, metrics.csv, oof.csv, lr_find.json) and the
training images under data/<comp>/. Writes into the run folder: report.html (every figure embedded as
a base64 PNG, so the file can be mailed or opened anywhere), figures/*.png (the same figures, one file
each) and suspect_labels.csv. With k-fold every training image has an out-of-fold prediction, so the
confusion matrix, the top losses and the suspect labels cover the whole training set, not one split.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from rich.table import Table

from .console import console
from .errors import UserError
from .files import atomic_write
from .runs import read_summary

REPORT = "report.html"
SUSPECTS = "suspect_labels.csv"
FIGURES = "figures"

# A suspect label: the model predicts another class at least as surely as it usually predicts that class
# on its own images (capped: a confident model needs no more than even odds)
SUSPECT_MIN_P_OTHER = 0.5
CM_MAX_CLASSES = 20  # larger confusion matrices show the classes with the most errors
TOP_PAIRS = 10
GRID_IMAGES = 16


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
    if not oof_path.exists():
        raise UserError(f"run {run_dir} has no oof.csv, so there is nothing to report on; retrain it")
    try:
        oof = pd.read_csv(oof_path, dtype={"label": str, "pred": str, "image": str})
    except (ValueError, pd.errors.ParserError) as e:
        raise UserError(f"run {run_dir}: unreadable oof.csv ({e}); retrain it") from None
    classes = [c[2:] for c in oof.columns if c.startswith("p_")]
    missing = {"image", "label"} - set(oof.columns)
    if missing or len(classes) < 2:
        raise UserError(f"{oof_path}: needs columns image, label and p_<class> per class; retrain the run")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(oof["label"]) - set(index))
    if unknown:
        raise UserError(f"{oof_path}: labels {unknown[:5]} have no p_<class> column; retrain the run")
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


# ---------------------------------------------------------------- numbers


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

    Suspect: the predicted class j is not the given label and p_j reaches j's threshold
    (class_thresholds). Ranked by how much more the model believes j than the given label
    (p_suggested - p_label), so flipped labels come first and hard, ambiguous images last.
    """
    df = losses(run)
    pred = run.pred
    p_pred = run.probs[np.arange(len(pred)), pred]
    keep = (pred != run.y) & (p_pred >= class_thresholds(run)[pred])
    df = df[keep].copy()
    df["margin"] = df["p_suggested"] - df["p_label"]
    df = df.sort_values(["margin", "loss"], ascending=False, kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    cols = ["rank", "image", "label", "suggested", "p_label", "p_suggested", "margin"]
    return df[cols + (["fold"] if "fold" in df else [])]


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


# ---------------------------------------------------------------- figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # the object API needs no pyplot and no display: headless

    return Figure(figsize=(w, h), dpi=100)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def fig_lr_find(lr: dict, chosen: float | None):
    fig = _figure(6.5, 4)
    ax = fig.subplots()
    ax.plot(lr["lrs"], lr["raw_losses"], color="0.75", lw=1, label="loss")
    ax.plot(lr["lrs"], lr["losses"], color="C0", lw=2, label="smoothed loss")
    ax.axvline(lr["suggestion"], color="C3", ls="--", label=f"suggestion {lr['suggestion']:.2e}")
    if chosen is not None:
        ax.axvline(chosen, color="C2", lw=2, alpha=0.7, label=f"chosen {chosen:.2e}")
    ax.set_xscale("log")
    finite = [v for v in lr["losses"] if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * finite[0]) * 1.1)
    ax.set(xlabel="learning rate (log)", ylabel="training loss", title="LR range test")
    ax.legend()
    return fig


def fig_curves(metrics: pd.DataFrame, best: dict[int, int], metric: str, freeze_epochs: int = 0):
    from matplotlib.lines import Line2D

    fig = _figure(11, 4)
    ax_loss, ax_m = fig.subplots(1, 2)
    folds = sorted(metrics["fold"].unique())
    few = metrics["epoch"].nunique() < 4  # single points need markers to be seen
    for k in folds:
        m = metrics[metrics["fold"] == k].sort_values("epoch")
        c = f"C{int(k) % 10}"
        mk = "o" if few else None
        ax_loss.plot(m["epoch"], m["train_loss"], color=c, ls="--", marker=mk, alpha=0.8)
        ax_loss.plot(m["epoch"], m["val_loss"], color=c, marker=mk, label=f"fold {k}")
        ax_m.plot(m["epoch"], m["metric"], color=c, marker=mk, label=f"fold {k}")
        if int(k) in best:
            at = m[m["epoch"] == best[int(k)]]
            if len(at):
                star = dict(marker="*", s=220, color=c, edgecolor="black", zorder=5)
                ax_loss.scatter(at["epoch"], at["val_loss"], **star)
                ax_m.scatter(at["epoch"], at["metric"], **star)
    if freeze_epochs:  # fastai-style fine_tune: the first epochs train the head only
        for ax in (ax_loss, ax_m):
            ax.axvspan(-0.5, freeze_epochs - 0.5, color="0.5", alpha=0.12, lw=0)
    handles, _ = ax_loss.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="0.3", ls="--", label="train loss"),
        Line2D([], [], color="0.3", label="val loss"),
        Line2D([], [], color="0.3", marker="*", ls="", ms=12, label="best epoch"),
    ]
    ax_loss.legend(handles=handles, fontsize=8)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss per fold (gap = overfitting)")
    ax_m.set(xlabel="epoch", ylabel=metric, title=f"validation {metric} per fold")
    for ax in (ax_loss, ax_m):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def confusion_subset(cm: np.ndarray, k: int = CM_MAX_CLASSES) -> np.ndarray:
    """Indices of the classes to show: all of them, or the k with the most errors (as true or predicted)."""
    n = len(cm)
    if n <= k:
        return np.arange(n)
    off = cm - np.diag(np.diag(cm))
    errors = off.sum(0) + off.sum(1)
    return np.argsort(-errors, kind="stable")[:k]


def fig_confusion(cm: np.ndarray, classes: list[str], idx: np.ndarray, normalize: bool):
    """Rows: true class; columns: predicted. Normalised by the true class's full count (= recall)."""
    totals = cm.sum(1, keepdims=True)
    full = cm / np.maximum(totals, 1) if normalize else cm
    sub = full[np.ix_(idx, idx)]
    n = len(idx)
    side = min(max(4.0, 0.42 * n + 2), 12)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    im = ax.imshow(sub, cmap="Blues", vmin=0, vmax=1 if normalize else max(sub.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    names = [_short(classes[i], 16) for i in idx]
    ax.set_xticks(range(n), names, rotation=90 if n > 6 or max(map(len, names)) > 4 else 0)
    ax.set_yticks(range(n), names)
    if n <= 25:
        hi = sub.max() or 1
        for (i, j), v in np.ndenumerate(sub):
            if v == 0 and i != j:
                continue
            txt = f"{v:.2f}" if normalize else f"{int(v)}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8 if n <= 12 else 6,
                    color="white" if v > hi * 0.6 else "black")  # fmt: skip
    what = "normalised by true class" if normalize else "counts"
    scope = f", {n} of {len(classes)} classes with the most errors" if n < len(classes) else ""
    ax.set(xlabel="predicted", ylabel="true (given label)", title=f"out-of-fold confusion ({what}{scope})")
    return fig


def fig_image_grid(rows: pd.DataFrame, data_dir: Path, pred_col: str, p_col: str):
    """A grid of training images titled true / predicted / probabilities; missing files are marked."""
    from PIL import Image

    n = len(rows)
    cols = min(4, max(n, 1))
    nrows = max(1, math.ceil(n / cols))
    fig = _figure(3 * cols, 3.2 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, r in zip(axes, rows.itertuples(index=False), strict=False):
        path = data_dir / r.image
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((160, 160))
                ax.imshow(np.asarray(im), interpolation="nearest")
        except OSError:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", transform=ax.transAxes)
        pred, p_pred = getattr(r, pred_col), getattr(r, p_col)
        ax.set_title(
            f"true {_short(r.label)} ({r.p_label:.2f})\n{pred_col} {_short(pred)} ({p_pred:.2f})\n"
            f"{_short(Path(r.image).name, 24)}",
            fontsize=8,
            color="C3" if pred != r.label else "black",
        )
    return fig


def _short(s: str, n: int = 18) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------- HTML

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


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def write_report(run_dir: Path, data_dir: Path | None = None, show_cv: bool = True) -> Path:
    """Write report.html, figures/*.png and suspect_labels.csv into run_dir; print the key tables."""
    run = load_run(Path(run_dir))
    s = run.summary
    data_dir = Path(data_dir) if data_dir else Path("data") / s.get("competition", "")
    fig_dir = run.dir / FIGURES
    fig_dir.mkdir(exist_ok=True)
    images: dict[str, bytes] = {}

    def save(name: str, fig) -> str:
        png = _png(fig)
        (fig_dir / f"{name}.png").write_bytes(png)
        images[name] = png
        return _img(png, name)

    metric = s.get("metric", "metric")
    cm = confusion(run)
    pairs = most_confused(cm, run.classes)
    pc = per_class(run)
    suspects = suspect_labels(run)
    atomic_write(run.dir / SUSPECTS, lambda p: suspects.to_csv(p, index=False, float_format="%.4f"))

    sec: list[str] = []
    # summary line and CV table
    test = s.get("test_score")
    test_txt = (
        f"test {metric} <b>{_fmt(test)}</b>"
        if test is not None
        else "no test score yet (<code>make submit</code> scores it where labels are known)"
    )
    sec.append(
        f"<h1>{html.escape(str(s.get('competition')))} · {html.escape(str(s.get('run', run.dir.name)))}</h1>"
        f"<p class='big'>{html.escape(str(s.get('model')))} · CV {html.escape(metric)} <b>{_fmt(s.get('cv_mean'))}</b> ± "
        f"{_fmt(s.get('cv_std'))} over {s.get('folds')} folds · OOF {_fmt(s.get('oof_score'))} · {test_txt}</p>"
        f"<p class='note'>lr {_fmt(s.get('lr'), '.2e')} · {s.get('img_size')} px · {len(run.y)} out-of-fold "
        f"images · {len(run.classes)} classes · trained in {_fmt(s.get('seconds'), '.0f')} s on "
        f"{html.escape(str(s.get('device')))}</p>"
    )
    sec.append("<h2>Cross-validation</h2>" + _table(cv_rows(run)))
    sec.append(
        "<h2>Config</h2>"
        + (
            f"<pre class='cfg'>{html.escape(run.config_text)}</pre>"
            if run.config_text
            else "<p class='note'>config.yaml not found in the run folder.</p>"
        )
    )
    # LR range test
    sec.append("<h2>Learning-rate range test</h2>")
    if run.lr_find:
        chosen = s.get("lr") if isinstance(s.get("lr"), int | float) else run.lr_find.get("chosen")
        sec.append(save("lr_find", fig_lr_find(run.lr_find, chosen)))
        sec.append(
            "<p class='note'>Loss while the learning rate grows exponentially. The suggestion sits in the "
            "valley where the loss falls fastest; the green line is the LR this run trained with.</p>"
        )
    else:
        sec.append(
            f"<p class='note'>No range test in this run: lr was fixed at {_fmt(s.get('lr'), '.2e')}. "
            "Train with <code>lr=auto</code> to see it.</p>"
        )
    # curves
    sec.append("<h2>Training curves</h2>")
    if run.metrics is not None:
        freeze = int(run.config.get("freeze_epochs") or 0)
        sec.append(save("curves", fig_curves(run.metrics, best_epochs(s), metric, freeze)))
        sec.append(
            "<p class='note'>Dashed: train loss; solid: validation. ★ the epoch whose weights were kept. "
            "Validation loss rising while train loss falls means more epochs overfit."
            + (" Grey band: head-only epochs (freeze_epochs)." if freeze else "")
            + "</p>"
        )
    else:
        sec.append("<p class='note'>No usable metrics.csv in the run folder.</p>")
    # confusion
    idx = confusion_subset(cm)
    sec.append(
        "<h2>Confusion matrix (out-of-fold)</h2><div class='row'>"
        + save("confusion_counts", fig_confusion(cm, run.classes, idx, normalize=False))
        + save("confusion_normalized", fig_confusion(cm, run.classes, idx, normalize=True))
        + "</div>"
    )
    pd.DataFrame(cm, index=run.classes, columns=run.classes).rename_axis("true \\ predicted").to_csv(
        run.dir / "confusion_matrix.csv"
    )
    if len(idx) < len(run.classes):
        sec.append(
            f"<p class='note'>Showing the {len(idx)} of {len(run.classes)} classes with the most errors "
            "(as true or predicted class); the full matrix is in <code>confusion_matrix.csv</code>.</p>"
        )
    sec.append(
        "<h3>Most confused pairs</h3>"
        + (
            _table(pairs.assign(**{"share of true": pairs["share of true"].map("{:.1%}".format)}))
            if len(pairs)
            else "<p>No out-of-fold errors.</p>"
        )
    )
    sec.append(
        f"<h2>Per-class precision, recall, F1</h2><p class='note'>Worst F1 first; {len(pc)} classes; "
        f"macro F1 {pc['f1'].mean():.4f}, support-weighted F1 "
        f"{np.average(pc['f1'], weights=pc['support']) if pc['support'].sum() else 0:.4f}.</p>"
        f"<div class='scroll'>{_table(pc)}</div>"
    )
    # images
    top = top_losses(run)
    shown = pd.concat([top["image"], suspects["image"].head(GRID_IMAGES)])
    missing = sum(not (data_dir / img).is_file() for img in shown.unique())
    if missing:
        sec.append(
            f"<p class='note'>{missing} images were not found under {html.escape(str(data_dir))}/ "
            "(run the report from the project folder, with the data prepared).</p>"
        )
    sec.append(
        "<h2>Top losses</h2><p class='note'>The out-of-fold images whose given label got the least "
        "probability: true label (its probability), prediction (its probability), file. Red: wrong.</p>"
        + save("top_losses", fig_image_grid(top, data_dir, "predicted", "p_predicted"))
    )
    # a model barely better than guessing "suspects" half the data: say so rather than let it accuse
    oof_acc = float((run.probs.argmax(1) == run.y).mean()) if len(run.y) else 0.0
    chance = float(np.bincount(run.y, minlength=len(run.classes)).max() / max(len(run.y), 1))
    weak = oof_acc < chance + 0.5 * (1 - chance)
    weak_note = (
        f"<p class='note'><b>Caution:</b> out-of-fold accuracy {oof_acc:.1%} is close to guessing the most "
        f"common class ({chance:.1%}); train longer or better before trusting this list.</p>"
        if weak
        else ""
    )
    sec.append(
        f"<h2>Suspect labels</h2><p class='note'>{len(suspects)} out-of-fold images that the model, which "
        "never trained on them, gives to another class at least as surely as it usually gives that class "
        f"to its own images (capped at {SUSPECT_MIN_P_OTHER:.0%}). Ranked by p(suggested) − p(label), so "
        f"the likeliest wrong labels come first; all listed in <code>{SUSPECTS}</code>. Look at them: a "
        "wrong label teaches the model the wrong thing, a right one shows a hard case.</p>" + weak_note
    )
    if len(suspects):
        sec.append(
            save(
                "suspect_labels",
                fig_image_grid(suspects.head(GRID_IMAGES), data_dir, "suggested", "p_suggested"),
            )
        )
        sec.append(f"<div class='scroll'>{_table(suspects.head(50))}</div>")

    title = html.escape(f"{s.get('competition')} · {s.get('run', run.dir.name)} · kagglecv report")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{''.join(sec)}</body></html>\n"
    )
    out = run.dir / REPORT
    atomic_write(out, lambda p: p.write_text(page, encoding="utf-8"))

    if show_cv:
        console.print(cv_table(run))
    console.print(pairs_table(pairs, len(run.classes)))
    console.print(
        f"[green]✓[/] report -> {out} ({len(images)} figures in {fig_dir}/); "
        f"{len(suspects)} suspect label{'s' * (len(suspects) != 1)} -> {run.dir / SUSPECTS}"
    )
    if weak:
        console.print(
            f"[yellow]caution:[/] out-of-fold accuracy {oof_acc:.1%} is little or no better than always "
            f"guessing the most common class ({chance:.1%}): the suspect labels say more about the model "
            "than about the labels"
        )
    return out


def cv_table(run: Run) -> Table:
    s = run.summary
    metric = s.get("metric", "metric")
    table = Table(title=f"{s.get('competition')} · {s.get('run', run.dir.name)}", title_justify="left")
    for col in ("fold", metric, "best epoch", "val_loss"):
        table.add_column(col, justify="right")
    for r in cv_rows(run).itertuples(index=False):
        table.add_row(str(r[0]), f"{r[1]:.4f}", str(r[2]), "" if pd.isna(r[4]) else f"{r[4]:.4f}")
    table.add_section()
    table.add_row("CV", f"[bold]{_fmt(s.get('cv_mean'))} ± {_fmt(s.get('cv_std'))}[/]", "", "")
    table.add_row("OOF", _fmt(s.get("oof_score")), "", "")
    if s.get("test_score") is not None:
        table.add_row("test", _fmt(s["test_score"]), "", "")
    return table


def pairs_table(pairs: pd.DataFrame, n_classes: int) -> Table:
    table = Table(title=f"most confused pairs (out-of-fold, {n_classes} classes)", title_justify="left")
    for col, just in (("true", "left"), ("predicted", "left"), ("count", "right"), ("share", "right")):
        table.add_column(col, justify=just)
    for r in pairs.itertuples(index=False):
        table.add_row(str(r[0]), str(r[1]), str(r[2]), f"{r[3]:.1%}")
    if not len(pairs):
        table.add_row("none", "", "", "")
    return table
