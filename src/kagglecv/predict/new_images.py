"""Ask a finished run about images it has never seen: files, folders or globs, decoded the way the
folder source decodes them, then the same resize, fold ensemble and TTA as `make submit`.

    kagglecv predict photos/cat.jpg 'photos/*.png' more_photos/ [--comp ..] [--run ..] [--top-k 3]

    df = predict_images(comp, run_dir, ["photos/"], top_k=3)   # also writes predictions/<comp>-<run>-<time>.csv

Owns: expanding the inputs into image files, decoding any image the folder source accepts (CMYK,
16-bit, palette, EXIF-rotated, ...; see images.decode), the run's fold ensemble as one object
(`Ensemble`, which `export` reuses) and the table + CSV of the answers. An image that cannot be
decoded is listed with its reason; it ends nothing.
"""

from __future__ import annotations

import glob
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.images import IMAGE_EXTS, decode
from kagglecv.core.runs import check_run, finished_folds, read_summary
from kagglecv.ml.data import squash
from kagglecv.predict.test_set import predict_size

PREDICTIONS_DIR = Path("predictions")
CHUNK = 64  # images decoded and predicted at a time: memory stays flat on a folder of 100k
SHOW_ROWS = 50  # rows in the table; the CSV has them all


@dataclass
class Ensemble:
    """A run's fold models on one device, with what their checkpoints say about the input."""

    run_dir: Path
    models: list  # torch modules in eval mode
    folds: list[int]
    meta: dict  # the first fold's checkpoint meta: model, classes, img_size, mean, std
    config: object  # the run's TrainConfig (amp, amp_dtype, tta)
    flips: list[str]  # test-time flips, as `make submit` averages them (chosen on OOF: tta.py)
    scales: list[float]  # 1.0, plus a larger scale where the OOF chose one
    postprocess: dict  # temperature/clip chosen on the run's OOF, as `make submit` applies it

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]

    @property
    def img_size(self) -> int:
        """The size `make submit` predicts at: test_size where the recipe sets one, else img_size."""
        return predict_size(self.meta)


def load_ensemble(comp, run_dir: Path, device=None) -> Ensemble:
    """Every fold model of a finished run (the folds its summary lists), ready to predict."""
    import torch

    from kagglecv.core.run_files import is_blend
    from kagglecv.predict.postprocess import postprocess_for_run
    from kagglecv.predict.test_set import load_fold_models
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
    first = models[0]
    classes = [str(c) for c in first.meta["classes"]]
    plan = choose_tta(comp, run_dir, models)
    return Ensemble(
        run_dir=run_dir,
        models=[fm.model for fm in models],
        folds=[fm.fold for fm in models],
        meta=first.meta,
        config=first.config,
        flips=plan["flips"],
        scales=plan["scales"],
        postprocess=postprocess_for_run(comp.metric, run_dir, classes),
    )


def ensemble_probs(ens: Ensemble, images: np.ndarray, flips: list[str] | None = None) -> np.ndarray:
    """N x C softmax probabilities for uint8 N x H x W x 3 images at the run's size: each fold with
    its TTA flips (engine.predict, as `make submit`), averaged over the folds; no post-processing."""
    import torch

    from kagglecv.ml.engine import Stepper, predict

    device = next(ens.models[0].parameters()).device
    batch = [(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), None)]
    total = 0
    for model in ens.models:
        stepper = Stepper(
            model,
            device=device,
            mean=ens.meta["mean"],
            std=ens.meta["std"],
            amp=ens.config.amp,
            amp_dtype_name=ens.config.amp_dtype,
        )
        total = total + predict(stepper, batch, ens.flips if flips is None else flips)
    return total / len(ens.models)


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


def load_image(path: Path, size: int) -> np.ndarray | str:
    """RGB uint8 at size x size, or why the file cannot be read (as a short reason)."""
    if path.suffix.lower() not in IMAGE_EXTS:
        return f"extension {path.suffix or '(none)'} is not an image's"
    try:
        data = path.read_bytes()
    except OSError as e:
        return e.strerror or type(e).__name__
    if not data:
        return "empty file"
    try:
        rgb = decode(data)[0]
    except Exception as e:  # noqa: BLE001 -- damaged files raise all sorts (struct.error, EOFError, ...)
        return f"cannot decode ({(str(e) or type(e).__name__)[:80]})"
    return squash(np.asarray(rgb, dtype=np.uint8), size)


def predict_paths(ens: Ensemble, paths: list[Path]) -> tuple[np.ndarray, dict[int, str]]:
    """N x C probabilities as `make submit` computes them (ensemble, TTA, post-processing; NaN rows
    for unreadable files) and {row: reason} for those files."""
    from kagglecv.predict.postprocess import apply_postprocess

    probs = np.full((len(paths), len(ens.classes)), np.nan)
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:  # cv2/PIL free the GIL
        for start in range(0, len(paths), CHUNK):
            rows = list(range(start, min(start + CHUNK, len(paths))))
            loaded = list(pool.map(lambda i: load_image(paths[i], ens.img_size), rows))
            good, images = [], []
            for i, img in zip(rows, loaded, strict=True):
                if isinstance(img, str):
                    errors[i] = img
                else:
                    good.append(i)
                    images.append(img)
            if good:
                p = ensemble_probs(ens, np.stack(images))
                for s in [s for s in ens.scales if s != 1.0]:  # the larger-scale view, as submit adds it
                    size = int(round(ens.img_size * s))
                    bigger = np.stack(list(pool.map(lambda i, size=size: load_image(paths[i], size), good)))
                    p = (p * (1 + len(ens.flips)) + ensemble_probs(ens, bigger, [])) / (2 + len(ens.flips))
                probs[good] = apply_postprocess(ens.postprocess, p)
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
    comp, run_dir: Path, inputs: list[str], *, top_k: int = 3, out: Path | None = None
) -> pd.DataFrame:
    """The run's answer for every image in `inputs` (files, folders, globs), shown as a table and
    written to `out` (default predictions/<comp>-<run>-<time>.csv; a folder: that name inside it)."""
    paths = expand_inputs(inputs)
    from kagglecv.ml.engine import pick_device

    ens = load_ensemble(comp, run_dir, pick_device("auto"))
    console.print(
        f"predicting {len(paths)} image(s) with {len(ens.models)} fold model(s) of run {escape(run_dir.name)}"
        + (f", TTA {'+'.join(ens.flips)}" if ens.flips else "")
    )
    probs, errors = predict_paths(ens, paths)
    df = answer_frame(paths, probs, errors, ens.classes, top_k)
    show_answers(df, top_k)
    name = f"{comp.slug}-{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    out = PREDICTIONS_DIR / name if out is None else Path(out) / name if Path(out).is_dir() else Path(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), lambda p: df.to_csv(p, index=False))
    console.print(
        f"[green]✓[/] wrote {escape(str(out))} ({len(df) - len(errors)} predicted, {len(errors)} unreadable)"
    )
    return df
