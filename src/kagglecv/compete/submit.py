"""Submissions: the competition's exact CSV from a run's test predictions, checked against
sample_submission.csv, scored where the test labels are known, uploaded when asked, and recorded.

    kagglecv submit --comp digits-demo [--run <run-id>] [--upload [--message "..."]]

Writes only its own files: submissions/<comp>-<run>.csv and its record submissions/<comp>-<run>.json
(source run, folds, TTA, CV, local test score, upload refs). The run folder is read, never edited;
prediction (predict/test_set.py) fills the run's test-prediction cache; records.py reads and writes the
records. torch is imported only when predicting.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape

from kagglecv.compete.records import SUBMISSIONS_DIR, earlier_uploads, write_file, write_record
from kagglecv.core.competition import Competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.locks import data_lock
from kagglecv.core.metrics import score
from kagglecv.core.runs import check_run, find_run, read_summary
from kagglecv.core.tables import read_csv
from kagglecv.prepare.layout import IMAGE_EXTS, read_prepared
from kagglecv.prepare.prepared import PreparedInfo


def test_images(comp: Competition, sample: pd.DataFrame, unreadable: Iterable[str] = ()) -> list[Path | None]:
    """The test image for each id of sample_submission.csv, in its order; None for an image that
    `make data` found unreadable (`unreadable`: prepared.json's unreadable_test): its row still goes in."""
    test_dir = comp.data_dir / "test"
    redo = f"rerun `make data COMP={comp.slug} FORCE=1`"
    if not test_dir.is_dir():
        raise UserError(f"{test_dir}/ is missing (the test images were moved or deleted): {redo}")
    key = (lambda p: p.stem) if comp.submission.id_is == "stem" else (lambda p: p.name)
    by_id: dict[str, Path | None] = {key(p): p for p in test_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    by_id.update(dict.fromkeys(key(Path(name)) for name in unreadable))
    ids = sample[comp.submission.id_column].astype(str)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(
            f"{len(missing)} ids of sample_submission.csv have no image in {test_dir}/ (e.g. {missing[0]}); {redo}"
        )
    unlisted = set(by_id) - set(ids)
    if unlisted:
        console.print(
            f"[yellow]warning:[/] test/ holds {len(unlisted)} images whose ids sample_submission.csv does not "
            f"list; only its {len(ids)} ids are predicted (Kaggle scores exactly those)"
        )
    return [by_id[i] for i in ids]


def class_prior(comp: Competition, counts: Mapping[str, int] | None, classes: list[str]) -> np.ndarray:
    """The training class frequencies (`counts`: prepared.json's train_counts; else folds.csv), in
    `classes` order."""
    if not counts:
        counts = read_csv(comp.data_dir / "folds.csv", "folds")["label"].astype(str).value_counts().to_dict()
    prior = np.array([float(counts.get(c, 0)) for c in classes])
    return prior / prior.sum() if prior.sum() > 0 else np.full(len(classes), 1 / len(classes))


def fill_unreadable(probs: np.ndarray, prior: np.ndarray, ids: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Rows without a prediction (NaN: the image could not be read) get the class prior; Kaggle
    scores every id, so the row stays. Returns the probabilities and the ids filled."""
    empty = np.isnan(probs).any(axis=1)
    probs = probs.copy()
    probs[empty] = prior
    filled = [str(i) for i in ids[empty]]
    if filled:
        shown = ", ".join(filled[:10]) + (f" … ({len(filled)} in all)" if len(filled) > 10 else "")
        console.print(
            f"[yellow]warning:[/] {len(filled)} test image(s) could not be read (ids {escape(shown)}): their "
            "rows hold the training class prior (the class frequencies)"
        )
    return probs, filled


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


def run_test_probs(
    comp: Competition, info: PreparedInfo, run_dir: Path, fold_ids: list[int], paths: list, tta: str = "auto"
) -> tuple:
    """(N x C probabilities, NaN rows for unreadable images; the run's classes; what prediction did)
    for one training run: its fold models, TTA, through the run's prediction cache."""
    from kagglecv.ml.engine import pick_device
    from kagglecv.predict.ensemble import load_fold_models
    from kagglecv.predict.test_set import predict_test
    from kagglecv.predict.tta import NO_TTA, choose_tta

    models = load_fold_models(run_dir, fold_ids, pick_device("auto"))
    classes = models[0].meta.classes
    if classes != info.classes:
        raise UserError(
            f"run {run_dir.name} was trained on classes {classes[:5]}…, the prepared data has others; retrain"
        )
    readable = [p for p in paths if p is not None]
    probs = np.full((len(paths), len(classes)), np.nan)
    plan = choose_tta(comp, run_dir, models) if tta == "auto" else NO_TTA
    if readable:
        pred = predict_test(
            models,
            run_dir=run_dir,
            paths=readable,
            data_root=comp.data_dir,
            hflip=comp.hflip,
            vflip=comp.vflip,
            tta=plan,
        )
        probs[[i for i, p in enumerate(paths) if p is not None]] = pred["probs"]
    return probs, classes, {"tta": plan.record(), "model": models[0].meta.model}


def blend_test_probs(
    comp: Competition, info: PreparedInfo, blend_dir: Path, paths: list, tta: str = "auto"
) -> tuple:
    """A blend's test probabilities: each member run predicted once (its cache serves every later
    submit), combined with the weights fitted on the OOF predictions."""
    from kagglecv.compete.blend import member_dir
    from kagglecv.core.run_files import blend_test_probs as combine
    from kagglecv.core.run_files import read_blend

    spec = read_blend(blend_dir, current=True)
    member_probs, member_tta = [], {}
    for name in spec["members"]:
        member = member_dir(blend_dir, name)  # its name checked by the name rule there
        fold_ids = check_run(member, read_summary(member))
        probs, classes, pred = run_test_probs(comp, info, member, fold_ids, paths, tta)
        if classes != spec["classes"]:
            raise UserError(f"run {name} predicts other classes than blend {blend_dir.name} was fitted on")
        member_probs.append(probs)
        member_tta[name] = pred["tta"]
    probs = combine(spec, member_probs)  # a NaN row (unreadable image) stays NaN
    return probs, spec["classes"], {"tta": member_tta, "model": "blend of " + ", ".join(spec["members"])}


def predict_and_format(
    comp: Competition, info: PreparedInfo, run_dir: Path, fold_ids: list[int], tta: str = "auto"
):
    """(submission frame, run classes, what prediction did) for a checked run or blend."""
    from kagglecv.core.run_files import is_blend
    from kagglecv.predict.postprocess import apply_postprocess, postprocess_for_run

    sample = read_sample(comp)
    paths = test_images(comp, sample, info.unreadable_test)
    if is_blend(run_dir):
        probs, classes, pred = blend_test_probs(comp, info, run_dir, paths, tta)
    else:
        probs, classes, pred = run_test_probs(comp, info, run_dir, fold_ids, paths, tta)
    check_classes(comp, sample, classes)
    plan = postprocess_for_run(comp.metric, run_dir, classes)
    ok = ~np.isnan(probs).any(1)
    probs[ok] = apply_postprocess(plan, probs[ok])
    probs, filled = fill_unreadable(
        probs, class_prior(comp, info.train_counts, classes), sample[comp.submission.id_column]
    )
    df = format_submission(comp, sample, probs, classes)
    validate_submission(df, sample, comp, classes)
    return df, classes, {**pred, "prior_rows": filled, "postprocess": plan}


def submit(
    comp: Competition,
    run: str | None = None,
    *,
    upload: bool = False,
    message: str | None = None,
    tta: str = "auto",
    again: bool = False,
) -> dict:
    """Predict the test set with a run, write submissions/<comp>-<run>.csv and its record (.json
    beside it), score it where labels are known, upload it when asked. The run folder is only read
    (and its prediction caches filled). `tta`: auto (chosen on OOF) or none; `again`: upload even
    bytes Kaggle already took. Returns the record."""
    with data_lock(comp.data_dir, exclusive=False, what="make submit"):
        info = read_prepared(comp)
        run_dir = find_run(comp.slug, run)
        summary = read_summary(run_dir)
        fold_ids = check_run(run_dir, summary)
        df, classes, pred = predict_and_format(comp, info, run_dir, fold_ids, tta)
        text = df.to_csv(index=False)
        SUBMISSIONS_DIR.mkdir(exist_ok=True)
        out = SUBMISSIONS_DIR / f"{comp.slug}-{run_dir.name}.csv"
        sha = hashlib.sha256(text.encode()).hexdigest()
        uploads = earlier_uploads(out, sha)
        write_file(out, lambda p: p.write_text(text))
        console.print(f"[green]✓[/] wrote {out} ({len(df)} rows, checked against sample_submission.csv)")
        record = {
            "competition": comp.slug,
            "file": str(out),
            "sha256": sha,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "run": run_dir.name,
            "folds": fold_ids,
            "metric": comp.metric,
            "cv_mean": summary["cv_mean"],
            "cv_std": summary.get("cv_std"),
            **pred,
            "test_score": None,
            "uploads": uploads,
        }
        write_record(record)  # before scoring: a solution.csv that cannot score it still leaves the record
        record["test_score"] = local_score(comp, df, classes, out)
        if record["test_score"] is not None:
            write_record(record)
            console.print(
                f"[bold]test {comp.metric}: {record['test_score']:.4f}[/]  "
                f"(CV {summary['cv_mean']:.4f} ± {summary.get('cv_std', 0):.4f})"
            )
    _upload(comp, record, upload, message, again)
    return record


def local_score(comp: Competition, df: pd.DataFrame, classes: list[str], out: Path) -> float | None:
    """The test score where the test labels are known (solution.csv), else None."""
    solution_path = comp.data_dir / "solution.csv"
    if not solution_path.exists():
        return None
    try:
        return score_submission(df, read_csv(solution_path, "solution"), comp, classes)
    except UserError as e:
        raise UserError(f"{out} is written and checked, but cannot be scored: {e}") from None


def _upload(comp: Competition, record: dict, upload: bool, message: str | None, again: bool) -> None:
    """Send the file when asked (and record Kaggle's answer), else say how."""
    if upload:
        from kagglecv.compete.upload import upload as send

        row = send(comp, Path(record["file"]), record["run"], record["cv_mean"], message, again=again)
        if row is not None:
            record["uploads"].append({**row, "ref": int(row.get("ref") or 0)})  # the log keeps text
            write_record(record)
    elif message:
        console.print(
            "[yellow]note:[/] MSG is the upload's description; nothing was uploaded without UPLOAD=1"
        )
    elif comp.source_kind == "kaggle" and comp.submission.upload:
        console.print(
            f"not uploaded; to send it to Kaggle: make submit UPLOAD=1 RUN={escape(record['run'])} [MSG=...]"
        )
