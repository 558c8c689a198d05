"""Ask a finished run about images it has never seen: files, folders or globs, decoded the way the
folder source decodes them, then the same resize, fold ensemble and TTA as `make submit`.

    kagglecv predict photos/cat.jpg 'photos/*.png' more_photos/ [--comp ..] [--run ..] [--top-k 3]

    df = predict_images(comp, run_dir, ["photos/"], top_k=3)   # also writes predictions/<comp>-<run>-<time>.csv

Owns: expanding the inputs into image files, loading a run as one Ensemble with the TTA and
post-processing `make submit` uses (load_ensemble, which `export` reuses), and the table + CSV of the
answers. Decoding and prediction are the inference core's (ensemble.py). An image that cannot be
decoded is listed with its reason; it ends nothing.
"""

from __future__ import annotations

import glob
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.images import IMAGE_EXTS
from kagglecv.core.runs import check_run, finished_folds, read_summary
from kagglecv.predict.ensemble import Ensemble, load_fold_models

PREDICTIONS_DIR = Path("predictions")
SHOW_ROWS = 50  # rows in the table; the CSV has them all


def load_ensemble(comp, run_dir: Path, device=None) -> Ensemble:
    """Every fold model of a finished run (the folds its summary lists), ready to predict, with the
    TTA views chosen on its OOF and its post-processing, as `make submit` predicts."""
    import torch

    from kagglecv.core.run_files import is_blend
    from kagglecv.predict.postprocess import postprocess_for_run
    from kagglecv.predict.tta import choose_tta

    if is_blend(run_dir):
        raise UserError(
            f"{run_dir.name} is a blend of runs: predict and export take one training run (RUN=<one of its members>)"
        )
    summary = read_summary(run_dir)  # a run that never finished says so in one line
    if not finished_folds(run_dir):
        raise UserError(f"run {run_dir} has no finished fold yet; train it (RESUME=1 continues it)")
    fold_ids = check_run(run_dir, summary)
    models = load_fold_models(run_dir, fold_ids, device or torch.device("cpu"))
    plan = choose_tta(comp, run_dir, models)
    return Ensemble.from_folds(
        models,
        flips=plan.flips,
        scales=plan.scales,
        postprocess=postprocess_for_run(comp.metric, run_dir, models[0].meta.classes),
        run_dir=run_dir,
    )


# ---- inputs -> image files -> pixels ---------------------------------------------------------


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Image files named directly, found in folders (recursively) or matched by globs, in order,
    each once. A name that matches nothing ends it, in one line, before any model loads."""
    if not inputs:
        raise UserError("no images given: name image files, folders or globs, e.g. photos/ 'shots/*.jpg'")
    out: list[Path] = []
    for arg in inputs:
        path = Path(arg).expanduser()
        if glob.has_magic(arg) and not path.exists():
            hits = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            files = [p for h in hits for p in (_folder_images(h) if h.is_dir() else [h])]
            if not files:
                raise UserError(
                    f"{arg} matches no file (quote the pattern so the shell leaves it to kagglecv)"
                )
        elif path.is_dir():
            files = _folder_images(path)
            if not files:
                exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTS))
                raise UserError(f"folder {arg} holds no image ({exts})")
        elif path.exists() or path.is_symlink():
            files = [path]
        else:
            raise UserError(f"{arg} does not exist (an image file, a folder of images or a glob)")
        out.extend(files)
    return list(dict.fromkeys(out))


def _folder_images(folder: Path) -> list[Path]:
    """Image files under a folder, hidden ones aside (what the folder source would read)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTS
        and (p.is_file() or p.is_symlink())
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def predict_paths(ens: Ensemble, paths: list[Path]) -> tuple[np.ndarray, dict[int, str]]:
    """N x C probabilities as `make submit` computes them (ensemble, TTA, post-processing; NaN rows
    for unreadable files) and {row: reason} for those files."""
    from kagglecv.predict.postprocess import apply_postprocess

    probs, errors = ens.predict_files(paths)
    good = ~np.isnan(probs).any(axis=1)
    if good.any():
        probs[good] = apply_postprocess(ens.postprocess, probs[good])
    return probs, errors


# ---- the answer: a table and a CSV -----------------------------------------------------------


def answer_frame(
    paths: list[Path], probs: np.ndarray, errors: dict[int, str], classes: list[str], top_k: int
) -> pd.DataFrame:
    """image, class, prob (the best), class_2, prob_2, ... up to top_k, and error for unreadable files."""
    k = max(1, min(top_k, len(classes)))
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1, kind="stable")[:, :k]
    df = pd.DataFrame({"image": [str(p) for p in paths]})
    for j in range(k):
        suffix = "" if j == 0 else f"_{j + 1}"
        cls = [classes[c] for c in order[:, j]]
        p = probs[np.arange(len(paths)), order[:, j]]
        df[f"class{suffix}"] = [None if i in errors else c for i, c in enumerate(cls)]
        df[f"prob{suffix}"] = p
    df["error"] = [errors.get(i, "") for i in range(len(paths))]
    return df


def show_answers(df: pd.DataFrame, top_k: int) -> None:
    k = sum(1 for c in df.columns if c.startswith("class"))
    table = Table(title=f"top {k}" if k > 1 else None)
    table.add_column("image", overflow="fold")
    for j in range(k):
        table.add_column("class" if j == 0 else f"#{j + 1}", overflow="fold")
    ok = df[df["error"] == ""]
    for _, row in ok.head(SHOW_ROWS).iterrows():
        cells = [
            f"{escape(str(row['class' if j == 0 else f'class_{j + 1}']))} "
            f"[dim]{row['prob' if j == 0 else f'prob_{j + 1}']:.3f}[/]"
            for j in range(k)
        ]
        table.add_row(escape(row["image"]), *cells)
    if len(ok):
        console.print(table)
    if len(ok) > SHOW_ROWS:
        console.print(f"… and {len(ok) - SHOW_ROWS} more rows in the CSV")
    bad = df[df["error"] != ""]
    if len(bad):
        console.print(f"[yellow]{len(bad)} file(s) could not be read[/] (not predicted):")
        for _, row in bad.head(SHOW_ROWS).iterrows():
            console.print(f"  {escape(row['image'])}: {escape(row['error'])}")


def predict_images(
    comp, run_dir: Path, inputs: list[str], *, top_k: int = 3, out: Path | str | None = None
) -> pd.DataFrame:
    """The run's answer for every image in `inputs` (files, folders, globs), shown as a table and
    written to `out` (default predictions/<comp>-<run>-<time>.csv; a folder, or a str ending in /:
    that name inside it; never over a file predict did not write, see `destination`). No image
    readable: a UserError, no CSV."""
    paths = expand_inputs(inputs)
    name = f"{comp.slug}-{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    out = destination(PREDICTIONS_DIR / name if out is None else out, name, paths)
    from kagglecv.ml.engine import pick_device

    ens = load_ensemble(comp, run_dir, pick_device("auto"))
    console.print(
        f"predicting {len(paths)} image(s) with {len(ens.models)} fold model(s) of run {escape(run_dir.name)}"
        + (f", TTA {'+'.join(ens.flips)}" if ens.flips else "")
    )
    probs, errors = predict_paths(ens, paths)
    df = answer_frame(paths, probs, errors, ens.classes, top_k)
    show_answers(df, top_k)
    if len(errors) == len(paths):  # an empty CSV and exit 0 would read as a success
        first = min(errors)
        more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        raise UserError(
            f"no image could be read ({paths[first]}: {errors[first]}{more}): nothing predicted, no CSV written"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: df.to_csv(p, index=False))
    console.print(
        f"[green]✓[/] wrote {escape(str(out))} ({len(df) - len(errors)} predicted, {len(errors)} unreadable)"
    )
    return df


# ---- where the CSV goes: never over what predict did not write ---------------------------------

ANSWER_HEADER = re.compile(r"image,class,prob(,class_(\d+),prob_\2)*,error")


def destination(out: Path | str, name: str, inputs: list[Path]) -> Path:
    """The CSV path for `out` (a folder, or a str ending in / that names one to make: `name` inside
    it), refused (UserError) where writing would destroy something: a file predict did not write
    (an input image, a run's oof.csv, anything without predict's header line), a link, or any place
    inside a run folder."""
    redo = "give -o a new file name or a folder (default: predictions/)"
    folder = isinstance(out, str) and out.endswith(("/", os.sep))  # Path() drops the trailing /
    out = Path(out)
    if folder and (out.is_symlink() or (out.exists() and not out.is_dir())):
        raise UserError(f"{out} is a link or a file, not a folder; predict does not write there: {redo}")
    if folder or (out.is_dir() and not out.is_symlink()):
        out = out / name
    run = next((d for d in out.absolute().parents if _is_run_folder(d)), None)
    if run is not None:
        raise UserError(f"{out} lies in the run folder {run}/; predict never writes into a run: {redo}")
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise UserError(f"{out} is a link or not a plain file; predict does not write there: {redo}")
    if not out.exists():
        return out
    if any(_same_file(out, p) for p in inputs):
        raise UserError(f"{out} is one of the images to predict; predict never writes over its input: {redo}")
    if not ANSWER_HEADER.fullmatch(_first_line(out)):
        raise UserError(f"{out} exists and is not a CSV predict wrote; predict never replaces it: {redo}")
    return out  # an earlier answer of predict's, asked for again by name: replaced


def _is_run_folder(folder: Path) -> bool:
    """runs/<comp>/<run>/ (or a copy of one elsewhere): its config.yaml with a run's other files."""
    return (folder / "config.yaml").is_file() and any(
        (folder / n).exists() for n in ("summary.json", "metrics.csv", "plan.json", "blend.json")
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _first_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.readline(1 << 16).decode("utf-8", errors="replace").rstrip("\r\n")
    except OSError:
        return ""
