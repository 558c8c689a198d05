"""Predict the test set with a run's fold models (TTA + fold ensemble), write the competition's exact
CSV, check it against sample_submission.csv, and score it where test labels are known.

    kagglecv submit --comp digits-demo [--run <run-id>]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .competition import Competition
from .console import console
from .data import ImageDataset, cached_images, default_workers, make_loader
from .engine import Stepper, pick_device, predict
from .errors import UserError
from .files import atomic_write
from .layout import IMAGE_EXTS, read_csv, read_prepared
from .metrics import score
from .model import create_model, place
from .runs import find_run, finished_folds, gather, load_checkpoint, read_summary, write_summary

SUBMISSIONS_DIR = Path("submissions")


def load_fold_models(
    run_dir: Path, summary: dict, device: torch.device
) -> list[tuple[torch.nn.Module, dict]]:
    models = []
    for fold in summary.get("fold_ids", range(summary["folds"])):
        path = run_dir / f"fold{fold}.pt"
        if not path.exists():
            raise UserError(
                f"run {run_dir.name} is missing {path.name} (its summary lists folds {summary.get('fold_ids')}); "
                "retrain it or copy the fold back"
            )
        state, meta = load_checkpoint(path)
        model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise UserError(
                f"{path}: weights do not fit {meta['model']}; the checkpoint is damaged, retrain"
            ) from None
        models.append((place(model, device).eval(), meta))
    return models


def test_images(comp: Competition, sample: pd.DataFrame) -> list[Path]:
    """The test image for each id of sample_submission.csv, in its order."""
    test_dir = comp.data_dir / "test"
    key = (lambda p: p.stem) if comp.submission.id_is == "stem" else (lambda p: p.name)
    by_id = {key(p): p for p in test_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    ids = sample[comp.submission.id_column].astype(str)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(
            f"{len(missing)} ids of sample_submission.csv have no image in {test_dir}/ (e.g. {missing[0]}); "
            f"rerun `make data COMP={comp.slug} FORCE=1`"
        )
    return [by_id[i] for i in ids]


def class_order(comp: Competition, classes: list[str]) -> list[str]:
    return [str(c) for c in comp.submission.classes] if comp.submission.classes else classes


def format_submission(
    comp: Competition, sample: pd.DataFrame, probs: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    sub = comp.submission
    df = pd.DataFrame({sub.id_column: sample[sub.id_column].to_numpy()})
    if sub.kind == "class_name":
        df[sub.label_columns[0]] = [classes[i] for i in probs.argmax(1)]
    elif sub.kind == "class_index":
        order = class_order(comp, classes)
        df[sub.label_columns[0]] = [order.index(classes[i]) for i in probs.argmax(1)]
    elif sub.kind == "probability":
        df[sub.label_columns[0]] = probs[:, classes.index(sub.positive_class)]
    else:  # class_probabilities: one column per class, in sample_submission's order
        for col in sample.columns:
            if col != sub.id_column:
                df[col] = probs[:, classes.index(col)]
    return df


def check_classes(comp: Competition, sample: pd.DataFrame, classes: list[str]) -> None:
    """The submission's class columns / names must be classes the run trained on (before predicting)."""
    sub = comp.submission
    trained = set(classes)
    if sub.kind == "class_probabilities":
        wanted = [c for c in sample.columns if c != sub.id_column]
        where = "sample_submission.csv's columns"
    elif sub.kind == "class_index":
        wanted, where = class_order(comp, classes), f"submission.classes in {comp.path}"
    elif sub.kind == "probability":
        wanted, where = [sub.positive_class], f"submission.positive_class in {comp.path}"
    else:
        return
    unknown = [c for c in wanted if c not in trained]
    if unknown:
        raise UserError(
            f"{where} name {unknown[:5]}, which are no training classes ({sorted(trained)[:8]}); "
            "fix that file, or the class folders, and rerun `make data FORCE=1`"
        )


def validate_submission(
    df: pd.DataFrame, sample: pd.DataFrame, comp: Competition, classes: list[str]
) -> None:
    """Same columns, same ids in the same order, values of the right kind -- or a clear error."""
    sub = comp.submission
    if list(df.columns) != list(sample.columns):
        raise UserError(
            f"submission columns {list(df.columns)} differ from sample_submission's {list(sample.columns)}"
        )
    if len(df) != len(sample):
        raise UserError(f"submission has {len(df)} rows, sample_submission has {len(sample)}")
    ids, want = df[sub.id_column].astype(str).to_numpy(), sample[sub.id_column].astype(str).to_numpy()
    bad = np.flatnonzero(ids != want)
    if len(bad):
        i = bad[0]
        raise UserError(
            f"submission ids differ from sample_submission's at row {i + 2}: {ids[i]!r} vs {want[i]!r} "
            f"({len(bad)} rows differ)"
        )
    values = df.drop(columns=[sub.id_column])
    if values.isna().any().any():
        raise UserError("submission has empty values")
    if sub.kind == "class_name":
        allowed = set(class_order(comp, classes))
        wrong = sorted(set(values.iloc[:, 0].astype(str)) - allowed)
        if wrong:
            raise UserError(
                f"{sub.label_columns[0]} holds unknown classes {wrong[:5]}; expected one of {sorted(allowed)[:10]}"
            )
    elif sub.kind == "class_index":
        col = pd.to_numeric(values.iloc[:, 0], errors="coerce")
        n = len(class_order(comp, classes))
        if col.isna().any() or (col % 1 != 0).any() or col.min() < 0 or col.max() >= n:
            raise UserError(f"{sub.label_columns[0]} must hold class indices 0..{n - 1}")
    else:
        num = values.apply(pd.to_numeric, errors="coerce")
        if num.isna().any().any() or (num < 0).any().any() or (num > 1).any().any():
            raise UserError(
                f"{', '.join(values.columns[:3])}{'…' if values.shape[1] > 3 else ''} must hold probabilities in [0, 1]"
            )
        if sub.kind == "class_probabilities" and not np.allclose(num.sum(axis=1), 1.0, atol=1e-3):
            raise UserError("class probabilities in a row must sum to 1")


def submission_probs(df: pd.DataFrame, comp: Competition, classes: list[str]) -> np.ndarray:
    """A submission turned back into N x C probabilities, so one metric function scores both."""
    sub = comp.submission
    n, c = len(df), len(classes)
    probs = np.zeros((n, c))
    if sub.kind == "class_name":
        probs[np.arange(n), [classes.index(str(v)) for v in df[sub.label_columns[0]]]] = 1
    elif sub.kind == "class_index":
        order = class_order(comp, classes)
        probs[np.arange(n), [classes.index(order[int(v)]) for v in df[sub.label_columns[0]]]] = 1
    elif sub.kind == "probability":
        pos = classes.index(sub.positive_class)
        p = df[sub.label_columns[0]].to_numpy(dtype=float)
        probs[:, pos] = p
        probs[:, 1 - pos] = 1 - p
    else:
        for j, cls in enumerate(classes):
            probs[:, j] = df[cls].to_numpy(dtype=float)
    return probs


def score_submission(
    df: pd.DataFrame, solution: pd.DataFrame, comp: Competition, classes: list[str]
) -> float:
    sub = comp.submission
    where = "solution.csv (the labelled test set)"
    missing = {sub.id_column, "label"} - set(solution.columns)
    if missing:
        raise UserError(f"{where} lacks column(s) {sorted(missing)}: it needs {sub.id_column},label")
    truth = solution.set_index(solution[sub.id_column].astype(str))["label"].astype(str)
    ids = df[sub.id_column].astype(str)
    absent = [i for i in ids if i not in truth.index]
    unknown = sorted(set(truth[[i for i in ids if i in truth.index]]) - set(classes))
    if absent or unknown:
        what = (
            f"no label for id {absent[0]!r} ({len(absent)} ids)"
            if absent
            else f"unknown labels {unknown[:5]}"
        )
        raise UserError(f"{where} has {what}; the classes are {classes[:10]}")
    y = np.array([classes.index(truth[i]) for i in ids])
    pos = classes.index(sub.positive_class) if sub.positive_class in classes else 1
    return score(comp.metric, y, submission_probs(df, comp, classes), positive=pos)


def read_sample(comp: Competition) -> pd.DataFrame:
    path = comp.data_dir / "sample_submission.csv"
    if not path.exists():
        raise UserError(f"{path} is missing: run `make data COMP={comp.slug} FORCE=1`")
    sample = read_csv(path, "sample submission")
    if len(sample) == 0:
        raise UserError(f"{path} lists no ids (only a header): rerun `make data COMP={comp.slug} FORCE=1`")
    if comp.submission.id_column not in sample.columns:
        raise UserError(
            f"{path} has no '{comp.submission.id_column}' column (it has {list(sample.columns)[:5]}); "
            f"fix submission.id_column in {comp.path} or the file"
        )
    return sample


def submit(comp: Competition, run: str | None = None, batch_size: int = 128) -> dict:
    info = read_prepared(comp)
    run_dir = find_run(comp.slug, run)
    summary = read_summary(run_dir)
    if set(finished_folds(run_dir)) - set(summary.get("fold_ids", [])):
        summary = gather(run_dir, comp)  # folds trained elsewhere were copied in: fold them into the summary
        console.print(f"gathered the finished folds of {run_dir.name} into its summary")
    device = pick_device("auto")
    models = load_fold_models(run_dir, summary, device)
    meta = models[0][1]
    classes = meta["classes"]
    if classes != [str(c) for c in info["classes"]]:
        raise UserError(
            f"run {run_dir.name} was trained on classes {classes[:5]}…, the prepared data has others; retrain"
        )
    sample = read_sample(comp)
    check_classes(comp, sample, classes)
    paths = test_images(comp, sample)
    n_test = sum(1 for p in (comp.data_dir / "test").iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if n_test != len(paths):
        console.print(
            f"[yellow]warning:[/] sample_submission.csv lists {len(paths)} ids but test/ holds {n_test} images; "
            "only the listed ids are predicted (Kaggle scores exactly those)"
        )
    console.print(
        f"predicting {len(paths)} test images with {len(models)} fold model(s) of run {run_dir.name}"
    )
    cfg = meta["config"]
    tta = cfg.get("tta", True)
    flips = [f for f, ok in (("hflip", comp.hflip), ("vflip", comp.vflip)) if ok and tta]
    # decode + resize every test image once, not once per fold model
    paths, images = cached_images(
        paths,
        comp.data_dir,
        meta["img_size"],
        cfg.get("cache", "auto"),
        cfg.get("cache_mb", 2048),
        "decoding test images",
    )
    ds = ImageDataset(paths, np.zeros(len(paths)), meta["img_size"], images)
    workers = default_workers(cfg.get("workers"), images is not None, device.type == "cuda")
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, workers=workers, pin=device.type == "cuda")
    probs = 0
    for model, m in models:
        stepper = Stepper(
            model,
            device=device,
            mean=m["mean"],
            std=m["std"],
            amp=cfg.get("amp", True),
            amp_dtype_name=cfg.get("amp_dtype", "auto"),
        )
        probs = probs + predict(stepper, loader, flips)
    probs = probs / len(models)

    df = format_submission(comp, sample, probs, classes)
    validate_submission(df, sample, comp, classes)
    SUBMISSIONS_DIR.mkdir(exist_ok=True)
    out = SUBMISSIONS_DIR / f"{comp.slug}-{run_dir.name}.csv"
    atomic_write(out, lambda p: df.to_csv(p, index=False))
    np.save(run_dir / "test_probs.npy", probs)
    result = {"file": str(out), "run": run_dir.name, "cv_mean": summary["cv_mean"], "tta": flips}
    console.print(f"[green]✓[/] wrote {out} ({len(df)} rows, checked against sample_submission.csv)")
    solution_path = comp.data_dir / "solution.csv"
    if solution_path.exists():
        try:
            test_score = score_submission(df, read_csv(solution_path, "solution"), comp, classes)
        except UserError as e:
            raise UserError(f"{out} is written and checked, but cannot be scored: {e}") from None
        summary["test_score"] = test_score
        summary["submission"] = str(out)
        write_summary(run_dir, summary)
        result["test_score"] = test_score
        console.print(
            f"[bold]test {comp.metric}: {test_score:.4f}[/]  (CV {summary['cv_mean']:.4f} ± {summary['cv_std']:.4f})"
        )
    return result
