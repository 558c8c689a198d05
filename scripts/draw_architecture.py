"""Draw docs/architecture.png: kagglecv's stage folders as boxes in layer order, with an arrow for
every pair of stages where one imports the other, and the number of imports on each arrow.

    PYTHONPATH=src python scripts/draw_architecture.py            # -> docs/architecture.png
    PYTHONPATH=src python scripts/draw_architecture.py --out x.png
    PYTHONPATH=src python scripts/draw_architecture.py --table     # the same counts as a Markdown table

The import graph is grimp's (the graph import-linter checks in `make lint`), collapsed to the stage
folders: the number on an arrow from A to B counts the (module in A, module in B) pairs where the
first imports the second. The layer order comes from the layers contract in pyproject.toml, so the
picture follows the rule `make lint` enforces: every arrow points down. Imports of the package root
(src/kagglecv/__init__.py: the version and the pixel cap) and `python -m kagglecv` (__main__.py)
are left out. Arrows into core run on the left, all others on the right.
"""

from __future__ import annotations

import argparse
import io
import math
import re
from collections import Counter
from pathlib import Path

import grimp
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "kagglecv"

# One line under each box: what the stage is for (each stage's __init__.py docstring says it in full).
ROLES = {
    "cli": "the kagglecv command: parser + commands",
    "bench": "make bench, kagglecv bench --fastai",
    "ship": "make export, make kernel (Kaggle notebooks)",
    "report": "make report: report.html, look inside",
    "compete": "make submit, upload, blend, runs, lb",
    "predict": "fold models: test set, new images, TTA, post-processing",
    "tune": "make tune: an Optuna study of short runs",
    "train": "make train: k-fold run, one fold, LR test, memory guard",
    "ml": "torch: data, batches, model, Stepper, DDP",
    "prepare": "make data: sources, layout, folds, verify, inspect",
    "core": "shared: errors, files, locks, config, runs, images",
}

BOX_W, BOX_H, STEP = 4.8, 1.0, 1.5  # box size and the distance between layers (data units)


def layers_from_pyproject(pyproject: Path) -> list[str]:
    """The stage names of the import-linter layers contract, top (cli) first. (Read with a pattern,
    not tomllib, which Python 3.10 lacks.)"""
    text = pyproject.read_text()
    contracts = text[text.find("[tool.importlinter]") :]
    found = re.search(r"^layers\s*=\s*\[(.*?)\]", contracts, re.S | re.M)
    if "[tool.importlinter]" not in text or not found:
        raise SystemExit(f"{pyproject} has no import-linter layers contract")
    names = re.findall(r'"([^"]+)"', found.group(1))
    return [name.removeprefix(PACKAGE + ".") for name in names]


def stage_imports(stages: list[str]) -> tuple[Counter, Counter]:
    """(imports between stages as {(importer, imported): count}, modules per stage)."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)  # no .grimp_cache folder left in the repository

    def stage(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in stages else None

    edges: Counter = Counter()
    sizes: Counter = Counter()
    for module in graph.modules:
        a = stage(module)
        if a is None:
            continue
        if module != f"{PACKAGE}.{a}":
            sizes[a] += 1
        for imported in graph.find_modules_directly_imported_by(module):
            b = stage(imported)
            if b is not None and b != a:
                edges[a, b] += 1
    return edges, sizes


def arc(x0: float, y0: float, y1: float, bulge: float) -> MplPath:
    """A cubic curve from (x0, y0) to (x0, y1) bulging sideways by `bulge` (negative: to the left)."""
    return MplPath(
        [(x0, y0), (x0 + bulge, y0), (x0 + bulge, y1), (x0, y1)],
        [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4],
    )


def draw(stages: list[str], edges: Counter, sizes: Counter, out: Path) -> None:
    n = len(stages)
    y_of = {s: -i * STEP for i, s in enumerate(stages)}
    bottom = stages[-1]
    left = {e: c for e, c in edges.items() if e[1] == bottom}
    right = {e: c for e, c in edges.items() if e[1] != bottom}
    max_span_left = max((stages.index(b) - stages.index(a) for a, b in left), default=1)
    max_span_right = max((stages.index(b) - stages.index(a) for a, b in right), default=1)
    k_left, k_right = 0.42, 0.56  # sideways bulge per layer spanned
    x_min = -BOX_W / 2 - 0.75 * k_left * (max_span_left + 1) - 0.6
    x_max = BOX_W / 2 + 0.75 * k_right * (max_span_right + 1) + 0.6
    y_min, y_max = -(n - 1) * STEP - BOX_H / 2 - 1.0, BOX_H / 2 + 0.9

    scale = 1.05  # inches per data unit
    fig = Figure(figsize=((x_max - x_min) * scale, (y_max - y_min) * scale), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(y_min, y_max)
    ax.set_axis_off()

    colours = {s: c for s, c in zip(stages, _palette(len(stages)), strict=True)}

    for s in stages:
        y = y_of[s]
        ax.add_patch(
            FancyBboxPatch(
                (-BOX_W / 2, y - BOX_H / 2),
                BOX_W,
                BOX_H,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=_tint(colours[s]),
                edgecolor=colours[s],
                linewidth=2,
                zorder=3,
            )
        )
        ax.text(0, y + 0.13, f"{s}/", ha="center", va="center", fontsize=15, weight="bold", zorder=4)
        modules = f"{sizes[s]} module{'s' * (sizes[s] != 1)}"
        ax.text(0, y - 0.19, f"{modules} · {ROLES.get(s, '')}".rstrip(" ·"), ha="center", va="center",
                fontsize=9.5, color="#333333", zorder=4)  # fmt: skip

    _draw_side(ax, stages, y_of, right, colours, side=+1, k=k_right)
    _draw_side(ax, stages, y_of, left, colours, side=-1, k=k_left)

    ax.text(0, y_max - 0.35, "kagglecv: stage folders and the imports between them", ha="center",
            va="center", fontsize=15, weight="bold")  # fmt: skip
    ax.text(0, y_max - 0.72, f"an arrow A → B: modules in A import modules in B (the number: how many "
            f"module pairs); imports into {bottom}/ on the left",
            ha="center", va="center", fontsize=10, color="#333333")  # fmt: skip
    ax.text(0, y_min + 0.45, "src/kagglecv/<stage>/ · layer order from pyproject.toml's import-linter "
            "contract · `make lint` fails on any arrow pointing up",
            ha="center", va="center", fontsize=10, color="#333333")  # fmt: skip
    ax.text(0, y_min + 0.15, "drawn by scripts/draw_architecture.py from grimp's import graph",
            ha="center", va="center", fontsize=9, color="#666666")  # fmt: skip

    # 128 colours are plenty for flat boxes and lines, and make the file a quarter of the size
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    image = Image.open(buffer).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)


def _draw_side(ax, stages, y_of, edges, colours, side: int, k: float) -> None:
    """Arcs on one side of the column: outgoing arrows leave a box's lower half, incoming ones reach
    its upper half, the longer the span the further out (so arcs from one box nest, not cross)."""
    index = {s: i for i, s in enumerate(stages)}
    x0 = side * BOX_W / 2
    outgoing: dict[str, list] = {}
    incoming: dict[str, list] = {}
    for a, b in edges:
        outgoing.setdefault(a, []).append((a, b))
        incoming.setdefault(b, []).append((a, b))

    def slot(items: list, edge, top: float, bottom: float, longest_first: bool) -> float:
        ordered = sorted(items, key=lambda e: index[e[1]] - index[e[0]], reverse=longest_first)
        i = ordered.index(edge)
        return top - (top - bottom) * (i + 1) / (len(ordered) + 1)

    half = BOX_H / 2

    for (a, b), count in sorted(
        edges.items(), key=lambda kv: (index[kv[0][1]] - index[kv[0][0]], index[kv[0][0]])
    ):
        span = index[b] - index[a]
        # leave from the lower half: the longest span highest (outermost); arrive in the upper half:
        # the longest span lowest
        # (a box with arrows only leaving, or only arriving, on this side gives them its whole height)
        y0 = y_of[a] + slot(outgoing[a], (a, b), 0.0 if a in incoming else half, -half, longest_first=True)
        y1 = y_of[b] + slot(incoming[b], (a, b), half, 0.0 if b in outgoing else -half, longest_first=False)
        bulge = side * (k * span + 0.04 * index[a] + 0.3)
        colour = colours[a]
        ax.add_patch(
            FancyArrowPatch(
                path=arc(x0, y0, y1, bulge),
                arrowstyle="-|>",
                mutation_scale=11,
                linewidth=0.9 + 0.55 * math.log2(count),
                color=colour,
                alpha=0.9,
                zorder=2,
            )
        )
        # the curve's farthest point: 3/4 of the control points' offset, halfway down
        ax.text(x0 + 0.75 * bulge, (y0 + y1) / 2, str(count), ha="center", va="center", fontsize=9.5,
                weight="bold", color=colour, zorder=5,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": colour,
                      "linewidth": 0.8})  # fmt: skip


def _palette(n: int) -> list[str]:
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31"]  # fmt: skip
    return [base[i % len(base)] for i in range(n)]


def _tint(hex_colour: str, share: float = 0.85) -> tuple[float, float, float]:
    """The colour mixed with white: box fill."""
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return (r + (1 - r) * share, g + (1 - g) * share, b + (1 - b) * share)


def markdown_table(stages: list[str], edges: Counter, sizes: Counter) -> str:
    """One row per stage: its modules and the stages it imports (module pairs), in layer order."""
    rows = ["| stage | modules | imports (module pairs) |", "| --- | --- | --- |"]
    for a in stages:
        targets = [f"{b} {edges[a, b]}" for b in stages if (a, b) in edges]
        rows.append(f"| `{a}/` | {sizes[a]} | {', '.join(targets) or 'no other stage'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architecture.png")
    parser.add_argument(
        "--table", action="store_true", help="print the counts as a Markdown table, draw nothing"
    )
    args = parser.parse_args()
    stages = layers_from_pyproject(ROOT / "pyproject.toml")
    edges, sizes = stage_imports(stages)
    if args.table:
        print(markdown_table(stages, edges, sizes))
        return
    upward = [(a, b) for a, b in edges if stages.index(b) < stages.index(a)]
    draw(stages, edges, sizes, args.out)
    total = sum(edges.values())
    print(f"{len(edges)} stage pairs, {total} module imports between stages -> {args.out}")
    if upward:
        print(
            "imports against the layer order (make lint fails on these): "
            + ", ".join(f"{a} -> {b}" for a, b in upward)
        )


if __name__ == "__main__":
    main()
