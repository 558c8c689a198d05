"""The report's figures, drawn headless with matplotlib's object API (no pyplot, no display).

Each `fig_*` returns a matplotlib Figure; `png` turns one into bytes. Class names in other scripts
(CJK) are drawn with a fallback font where one is installed (Debian's fonts-wqy-zenhei or
fonts-noto-cjk); without one, a single warning says so instead of a figure full of empty boxes.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from kagglecv.core.console import console

CM_MAX_CLASSES = 20  # larger confusion matrices show the classes with the most errors
# fonts with CJK glyphs, by family name, and where Debian's packages put them (found even when
# matplotlib's font cache predates the install)
CJK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Droid Sans Fallback")
CJK_FILES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
CJK_INSTALL = "apt-get install fonts-wqy-zenhei"
_state: dict = {}


def cjk_fonts() -> list[str]:
    """The CJK-capable font families matplotlib can use here (registering Debian's files if needed)."""
    if "cjk" not in _state:
        from matplotlib import font_manager

        known = {f.name for f in font_manager.fontManager.ttflist}
        if not known & set(CJK_FAMILIES):
            for path in CJK_FILES:
                if Path(path).is_file():
                    font_manager.fontManager.addfont(path)
            known = {f.name for f in font_manager.fontManager.ttflist}
        _state["cjk"] = [f for f in CJK_FAMILIES if f in known]
    return _state["cjk"]


def _needs_cjk(text: str) -> bool:
    # CJK radicals/kana/ideographs/Hangul, and full-width forms: none of them is in DejaVu Sans
    return any(0x2E80 <= ord(ch) <= 0xD7AF or 0xF900 <= ord(ch) <= 0xFFEF for ch in text)


def use_fonts(names: list[str]) -> None:
    """Set matplotlib's font list: DejaVu Sans, then any CJK font (per-glyph fallback). Class names
    that need a CJK font when there is none: one warning, and matplotlib's per-glyph ones silenced."""
    import logging
    import warnings

    import matplotlib

    fallback = cjk_fonts()
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", *fallback]
    # WenQuanYi has a medium weight only: matplotlib would log that it takes it for every text
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    if fallback or _state.get("warned") or not any(_needs_cjk(str(n)) for n in names):
        return
    _state["warned"] = True
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
    console.print(
        "[yellow]warning:[/] class names in CJK script, but no CJK font is installed: the figures show "
        f"them as empty boxes (`{CJK_INSTALL}` fixes it; the tables and CSVs are not affected)"
    )


def new_figure(w: float, h: float):
    from matplotlib.figure import Figure  # the object API needs no pyplot and no display: headless

    return Figure(figsize=(w, h), dpi=100)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def img_tag(png_bytes: bytes, alt: str) -> str:
    """An <img> with the PNG inline (a page that is one self-contained file)."""
    data = base64.b64encode(png_bytes).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fig_lr_find(lr: dict, chosen: float | None):
    fig = new_figure(6.5, 4)
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

    fig = new_figure(11, 4)
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
    _mark_sizes(metrics, (ax_loss, ax_m))
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


def size_changes(metrics: pd.DataFrame) -> list[tuple[int, int]]:
    """(epoch, size) where each training size starts (progressive resizing); [] for one size."""
    if "img_size" not in metrics or metrics["img_size"].nunique() < 2:
        return []
    first = metrics[metrics["fold"] == metrics["fold"].min()].sort_values("epoch")
    sizes = first[["epoch", "img_size"]].dropna().astype(int).itertuples(index=False)
    out: list[tuple[int, int]] = []
    for epoch, size in sizes:
        if not out or out[-1][1] != size:
            out.append((epoch, size))
    return out


def _mark_sizes(metrics: pd.DataFrame, axes) -> None:
    """A dotted line where the image size changed, labelled with the new size."""
    for i, (epoch, size) in enumerate(size_changes(metrics)):
        for ax in axes:
            if i:
                ax.axvline(epoch - 0.5, color="0.35", ls=":", lw=1.2)
            at = (epoch - 0.45, ax.get_xaxis_transform()) if i else (0.01, ax.transAxes)  # first: at the left
            ax.text(at[0], 0.99, f"{size}px", transform=at[1], va="top", fontsize=8, color="0.3")


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
    fig = new_figure(side + 1, side)
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
    fig = new_figure(3 * cols, 3.2 * nrows)
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
        # a text above the axes, not set_title: a title is placed against the (hidden) axis decorations
        # at every draw, which made these grids the slowest figures of the report
        ax.text(
            0.5,
            1.02,
            f"true {_short(r.label)} ({r.p_label:.2f})\n{pred_col} {_short(pred)} ({p_pred:.2f})\n"
            f"{_short(Path(r.image).name, 24)}",
            fontsize=8,
            color="C3" if pred != r.label else "black",
            ha="center",
            va="bottom",
            transform=ax.transAxes,
        )
    return fig


def _short(s: str, n: int = 18) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"
