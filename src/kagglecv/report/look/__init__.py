"""Look inside a finished run: per-class galleries (most right, most wrong, most uncertain), Grad-CAM
heatmaps of where the model looks, and a map of the data in the model's feature space.

    result = build_look(run_dir, data_dir, run_dir / "look", budget_s=60, force=False)
    # result.html: a section for report.html; result.seconds: the time it took

Reads the run folder (oof.csv, fold<k>.pt, suspect_labels.csv if the report wrote it) and the
prepared images under data_dir; every image is judged by the fold model that held it out. Writes
into out_dir: gallery_<nn>.png per class, top_losses_cam.png, datamap.png, galleries.csv and
datamap.csv. It first measures what one image costs and estimates the whole; over `budget_s` (and
not `force`) it builds nothing and says how long it would take.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kagglecv.core.console import console
from kagglecv.core.files import atomic_write
from kagglecv.report.look.datamap import (
    OOD_RATIO,
    fig_map,
    map_frame,
    ood_line,
    ood_ratio,
    procrustes,
    project,
)
from kagglecv.report.look.galleries import MAX_CLASSES, fig_grid, gallery_rows, top_loss_rows
from kagglecv.report.look.passes import Context, anchor_rows, cost_per_image, fold_passes, open_context

TSNE_S_PER_POINT = 0.008  # s per point at 2,000 points, measured on digits-demo (2 busy cores); ~ n log n
FIGURE_S = 0.8


@dataclass
class LookResult:
    out_dir: Path
    html: str
    figures: list[Path]
    csvs: list[Path]
    seconds: float
    estimate_s: float
    skipped: bool = False
    notes: list[str] = field(default_factory=list)
    heatmaps: dict = field(default_factory=dict)  # image (as in oof.csv) -> H x W heatmap, 0..1


def estimate_seconds(ctx: Context, n_cam: int, n_figures: int) -> float:
    """The rest of the build, from the measured cost of one image (decode, features, Grad-CAM)."""
    c = cost_per_image(ctx)
    n_train, n_test, k = len(ctx.train_paths), len(ctx.test_paths), len(ctx.fold_ids)
    n = n_train + n_test
    embedded = n + (k - 1) * len(anchor_rows(n_test))
    tsne = TSNE_S_PER_POINT * n * max(np.log2(max(n, 2)) / np.log2(2000), 0.1)
    return (
        n * c["decode"] + embedded * c["features"] + n_cam * c["cam"]
        + k * c["load"] + tsne + n_figures * FIGURE_S
    )  # fmt: skip


def build_look(
    run_dir: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    budget_s: float = 60.0,
    force: bool = False,
    max_classes: int = MAX_CLASSES,
) -> LookResult:
    """Galleries, heatmaps and the data map of a finished run (see the module docstring)."""
    from kagglecv.report.analysis import load_run

    t0 = time.perf_counter()
    run = load_run(Path(run_dir))
    ctx = open_context(run, Path(data_dir))
    gallery, top = gallery_rows(run, cap=max_classes), top_loss_rows(run)
    cam_rows = pd.concat([gallery, top]).drop_duplicates("row")
    n_classes = gallery["class"].nunique()
    # what is spent already (imports, the first model, the probe) + the rest, from measured costs
    est = estimate_seconds(ctx, len(cam_rows), n_classes + 2) + time.perf_counter() - t0
    out_dir = Path(out_dir)
    if est > budget_s and not force:
        note = (
            f"Look inside the model: skipped, it would take about {est:.0f} s on {ctx.device.type} "
            f"(over the {budget_s:.0f} s budget); `kagglecv report --look` builds it."
        )
        console.print(f"[yellow]{note}[/]")
        return LookResult(out_dir, _section([f"<p class='note'>{html.escape(note)}</p>"]), [], [],
                          time.perf_counter() - t0, est, skipped=True, notes=[note])  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fold_passes(ctx, cam_rows)
    result = LookResult(out_dir, "", [], [], 0.0, est, notes=list(fp.notes))
    result.heatmaps = {run.oof["image"].iat[r]: h for r, h in fp.heat.items()}
    parts = _galleries_html(ctx, gallery, top, fp, result)
    parts += _map_html(ctx, fp, result)
    result.seconds = time.perf_counter() - t0
    parts.append(
        f"<p class='note'>Built in {result.seconds:.1f} s on {ctx.device.type} (estimated {est:.0f} s).</p>"
    )
    result.html = _section(parts)
    console.print(
        f"[green]✓[/] look inside: {n_classes} class galleries, {len(fp.cams)} heatmaps, a map of "
        f"{len(ctx.train_paths) + len(ctx.test_paths)} images in {result.seconds:.1f} s -> {out_dir}/"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    return result


def _section(parts: list[str]) -> str:
    return "<h2>Look inside the model</h2>" + "".join(parts)


def _save_png(result: LookResult, name: str, fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    png = buf.getvalue()
    path = result.out_dir / f"{name}.png"
    atomic_write(path, lambda p: p.write_bytes(png))
    result.figures.append(path)
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def _save_csv(result: LookResult, name: str, df: pd.DataFrame) -> None:
    path = result.out_dir / name
    atomic_write(path, lambda p: df.to_csv(p, index=False, float_format="%.4f"))
    result.csvs.append(path)


def _galleries_html(ctx: Context, gallery: pd.DataFrame, top: pd.DataFrame, fp, result) -> list[str]:
    _save_csv(result, "galleries.csv", pd.concat([gallery, top], ignore_index=True))
    n_all = len(ctx.run.classes)
    shown = gallery["class"].unique()
    scope = (
        f"the {len(shown)} of {n_all} classes with the most errors" if len(shown) < n_all else "each class"
    )
    parts = [
        f"<h3>Galleries</h3><p class='note'>For {scope}, from the out-of-fold predictions (each image "
        "judged by the fold model that never trained on it): the images most surely and rightly given "
        "the class, those most surely given another class, and those nearest the decision boundary "
        "(smallest margin between the two most probable classes). Beside each image: where the model "
        f"looks for the class it predicts (Grad-CAM, {html.escape(fp.cam_what)}). Red: wrong. All rows "
        "in <code>galleries.csv</code>.</p>"
    ]
    for i, cls in enumerate(shown):
        rows = gallery[gallery["class"] == cls]
        fig = fig_grid(rows, fp.images, fp.cams, f"class {cls}")
        parts.append(_save_png(result, f"gallery_{i:02d}", fig))
    parts.append("<h3>Top losses: where the model looked</h3>")
    parts.append(_save_png(result, "top_losses_cam", fig_grid(top, fp.images, fp.cams, "top losses", False)))
    return parts


def _map_html(ctx: Context, fp, result) -> list[str]:
    k0 = ctx.fold_ids[0]
    test = fp.test_feats[k0]
    anchors = test[anchor_rows(len(test))]
    train = np.zeros((len(ctx.train_paths), fp.train_feats[k0].shape[1]), dtype=np.float32)
    for k in ctx.fold_ids:
        own = ctx.folds == k
        aligned = k == k0 or len(anchors) < 2
        train[own] = (
            fp.train_feats[k] if aligned else procrustes(fp.test_feats[k], anchors)(fp.train_feats[k])
        )
    coords = project(np.concatenate([train, test]))
    train_df = pd.DataFrame({
        "image": ctx.run.oof["image"], "label": ctx.run.oof["label"],
        "pred": [ctx.run.classes[j] for j in ctx.run.pred], "fold": ctx.folds,
        "wrong": ctx.run.pred != ctx.run.y, "suspect": ctx.run.oof["image"].isin(ctx.suspects),
    })  # fmt: skip
    df = map_frame(coords, train_df, [str(p.relative_to(ctx.data_dir)) for p in ctx.test_paths])
    _save_csv(result, "datamap.csv", df)
    ratio = ood_ratio(fp.train_feats[k0], fp.test_feats[k0])
    line = ood_line(ratio, k0)
    if ratio is not None and ratio > OOD_RATIO:
        result.notes.append(line)
    how = (
        f"train: out-of-fold features, each fold model's mapped onto fold {k0}'s on {len(anchors)} test "
        f"images; test: fold {k0}'s features"
        if len(anchors) >= 2 or len(ctx.fold_ids) == 1
        else "train: out-of-fold features; no test images to align the fold models' spaces on"
    )
    return [
        "<h3>A map of the data</h3><p class='note'>Penultimate-layer features projected to 2-D by t-SNE "
        f"({html.escape(how)}). Colours: given label; grey: test images; x: misclassified out of fold; red "
        "ring: suspect label. A dot inside another class's cluster is a likely wrong label or a "
        "look-alike; a grey cloud away from every colour is a test set unlike train. Coordinates in "
        f"<code>datamap.csv</code>.</p>",
        _save_png(result, "datamap", fig_map(df, ctx.run.classes, how)),
        f"<p>{html.escape(line)}</p>",
    ]
