"""Per-class galleries from the out-of-fold predictions (fast.ai lesson 1's "most right, most wrong,
most uncertain"): which images, chosen from oof.csv alone, and the grid that draws them.

Every image was judged by the fold model that did not train on it. For each class (by its given
label): the images the model gave that class most surely and was right, the ones it gave another
class most surely (wrong), and the ones nearest the decision boundary (the smallest margin between
the two most probable classes). With many classes, those with the most errors come first, capped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("right", "wrong", "uncertain")
PER_KIND = 4  # images per kind and class
MAX_CLASSES = 12  # galleries for at most this many classes (most errors first)
COLUMNS = ["class", "kind", "rank", "row", "image", "label", "pred", "p_label", "p_pred", "margin", "fold"]


def class_order(y: np.ndarray, pred: np.ndarray, n_classes: int, cap: int = MAX_CLASSES) -> list[int]:
    """Class indices by their number of out-of-fold errors (as given label), most first; ties keep
    the class order; at most `cap`."""
    errors = np.bincount(y[pred != y], minlength=n_classes)
    return np.argsort(-errors, kind="stable")[:cap].tolist()


def margins(probs: np.ndarray) -> np.ndarray:
    """Top probability minus the runner-up's, per row: 0 sits on the decision boundary."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def gallery_rows(run, per_kind: int = PER_KIND, cap: int = MAX_CLASSES) -> pd.DataFrame:
    """One row per gallery image (COLUMNS); `row` indexes run.oof. Ties keep oof.csv's order."""
    n = len(run.y)
    idx = np.arange(n)
    pred = run.pred
    p_pred, p_label, margin = run.probs[idx, pred], run.probs[idx, run.y], margins(run.probs)
    folds = run.oof["fold"].to_numpy() if "fold" in run.oof else np.full(n, -1)
    rows = []
    for c in class_order(run.y, pred, len(run.classes), cap):
        own = run.y == c
        right, wrong = idx[own & (pred == c)], idx[own & (pred != c)]
        picks = {
            "right": right[np.argsort(-p_pred[right], kind="stable")],
            "wrong": wrong[np.argsort(-p_pred[wrong], kind="stable")],
            "uncertain": idx[own][np.argsort(margin[own], kind="stable")],
        }
        for kind in KINDS:
            for rank, i in enumerate(picks[kind][:per_kind]):
                rows.append(
                    (run.classes[c], kind, rank, int(i), run.oof["image"].iat[i], run.classes[run.y[i]],
                     run.classes[pred[i]], p_label[i], p_pred[i], margin[i], int(folds[i]))
                )  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _short(s, n: int = 18) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def _caption(r) -> str:
    from pathlib import Path

    return (
        f"true {_short(r.label, 9)} ({r.p_label:.2f})\npred {_short(r.pred, 9)} ({r.p_pred:.2f})\n"
        f"{_short(Path(r.image).name, 16)}"
    )


CELL = 96  # pixels per image in a grid
CAPTION = 44  # pixels of caption under each image
PAD = 6


def _fit(img: np.ndarray) -> np.ndarray:
    import cv2

    interp = cv2.INTER_NEAREST if img.shape[0] < CELL else cv2.INTER_AREA
    return cv2.resize(img, (CELL, CELL), interpolation=interp)


def fig_grid(rows: pd.DataFrame, images: dict, cams: dict, title: str, by_kind: bool = True):
    """Images (what the model saw), each with its heatmap beside it where there is one, drawn as one
    mosaic (one axes: a figure of many small axes takes seconds to draw).

    by_kind: one line of the grid per kind (KINDS) that has images; else lines of PER_KIND images.
    `images` / `cams` map `row` to an RGB uint8 array / an RGB uint8 overlay.
    """
    from matplotlib.figure import Figure

    if by_kind:
        lines = [rows[rows["kind"] == k] for k in KINDS if (rows["kind"] == k).any()]
    else:
        lines = [rows.iloc[i : i + PER_KIND] for i in range(0, len(rows), PER_KIND)]
    per = 2 if cams else 1
    label_w = 22 if by_kind else 0
    cell_w, cell_h = per * CELL + PAD, CELL + CAPTION
    width, height = label_w + PER_KIND * cell_w, max(len(lines), 1) * cell_h
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    texts = []
    for li, line in enumerate(lines):
        y0 = li * cell_h
        if by_kind:
            texts.append((label_w / 2, y0 + CELL / 2, line["kind"].iat[0], dict(rotation=90, fontsize=9)))
        for j, r in enumerate(line.itertuples(index=False)):
            x0 = label_w + j * cell_w
            if r.row in images:
                canvas[y0 : y0 + CELL, x0 : x0 + CELL] = _fit(images[r.row])
            if per == 2 and cams.get(r.row) is not None:
                canvas[y0 : y0 + CELL, x0 + CELL : x0 + 2 * CELL] = _fit(cams[r.row])
            elif per == 2 and r.row in cams:
                texts.append((x0 + 1.5 * CELL, y0 + CELL / 2, "no positive\nevidence", dict(fontsize=6.5)))
            color = "C3" if r.pred != r.label else "black"
            texts.append((x0 + 2, y0 + CELL + 2, _caption(r), dict(fontsize=6.5, color=color, va="top")))
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi + 0.3), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, height / (height + 30)))
    ax.imshow(canvas, interpolation="nearest")
    for x, y, text, kw in texts:
        ax.text(x, y, text, ha="left" if "va" in kw else "center", **{"va": "center", **kw})
    ax.axis("off")
    what = " · right of each image: where the model looks for the class it predicts" if per == 2 else ""
    fig.suptitle(f"{title}{what}", fontsize=8, y=0.995)
    return fig


def top_loss_rows(run, k: int = 2 * PER_KIND) -> pd.DataFrame:
    """The k images whose given label got the least out-of-fold probability, in gallery_rows' shape."""
    n = len(run.y)
    idx = np.arange(n)
    p_label = run.probs[idx, run.y]
    pred = run.pred
    folds = run.oof["fold"].to_numpy() if "fold" in run.oof else np.full(n, -1)
    rows = [
        (run.classes[run.y[i]], "top loss", rank, int(i), run.oof["image"].iat[i], run.classes[run.y[i]],
         run.classes[pred[i]], p_label[i], run.probs[i, pred[i]], margins(run.probs[i : i + 1])[0], int(folds[i]))
        for rank, i in enumerate(np.argsort(p_label, kind="stable")[:k])
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)
