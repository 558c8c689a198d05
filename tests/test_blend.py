"""Blends fitted on out-of-fold predictions: weights, honest nested CV, and the one-line refusals."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from kagglecv.compete.blend import (
    blend,
    fit_blend,
    greedy_weights,
    load_members,
)
from kagglecv.core.errors import UserError
from kagglecv.core.metrics import score
from kagglecv.core.run_files import blend_test_probs, read_blend
from kagglecv.core.runs import find_run, latest_unfinished

CLASSES = ["a", "b", "c"]


def _truth(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    folds = np.arange(n) % 5
    return y, folds


def _probs(y: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Noisy probabilities: `skill` mass on the true class, the rest random."""
    rng = np.random.default_rng(seed)
    noise = rng.dirichlet(np.ones(3), len(y))
    onehot = np.eye(3)[y]
    return skill * onehot + (1 - skill) * noise


def _write_run(root, name: str, y, folds, probs, metric="log_loss", finished=True, images=None, slug="toy"):
    run = root / "runs" / slug / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: x\n")
    images = images if images is not None else [f"train/{CLASSES[c]}/{i:04d}.png" for i, c in enumerate(y)]
    oof = pd.DataFrame({"image": images, "label": [CLASSES[c] for c in y], "fold": folds})
    for i, c in enumerate(CLASSES):
        oof[f"p_{c}"] = probs[:, i]
    oof.to_csv(run / "oof.csv", index=False)
    if finished:
        s = score(metric, y, probs)
        summary = {"run": name, "metric": metric, "cv_mean": s, "cv_std": 0.0, "fold_ids": [0, 1, 2, 3, 4]}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_greedy_weights_favour_the_better_member_and_sum_to_one():
    y, _ = _truth()
    good, bad = _probs(y, 0.6, 1), _probs(y, 0.05, 2)
    w = greedy_weights("log_loss", y, [good, bad])
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[0] > w[1]


def test_two_complementary_members_blend_better_than_either():
    y, folds = _truth(600)
    rng = np.random.default_rng(5)
    # each member is right on a different half of the rows
    half = rng.random(len(y)) < 0.5
    a = np.where(half[:, None], _probs(y, 0.7, 1), _probs(y, 0.1, 2))
    b = np.where(half[:, None], _probs(y, 0.1, 3), _probs(y, 0.7, 4))
    fit = fit_blend("log_loss", y, folds, [a, b])
    blended = score("log_loss", y, fit["oof"])
    assert blended < min(score("log_loss", y, a), score("log_loss", y, b))
    assert 0.3 < fit["weights"][0] < 0.7


def test_nested_cv_never_sees_the_held_out_labels():
    """Fold 0's blended predictions come from weights fitted on folds 1-4 only: changing fold 0's
    labels must not change them."""
    y, folds = _truth()
    members = [_probs(y, 0.5, 1), _probs(y, 0.3, 2), _probs(y, 0.1, 3)]
    first = fit_blend("log_loss", y, folds, members)["oof"]
    y2 = y.copy()
    y2[folds == 0] = (y2[folds == 0] + 1) % 3
    second = fit_blend("log_loss", y2, folds, members)["oof"]
    np.testing.assert_allclose(first[folds == 0], second[folds == 0])


def test_blend_folder_reads_like_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    y, folds = _truth()
    _write_run(tmp_path, "r1", y, folds, _probs(y, 0.5, 1))
    _write_run(tmp_path, "r2", y, folds, _probs(y, 0.4, 2))
    out = blend("toy", ["r1", "r2"])
    assert out.name.startswith("blend-")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "blend" and summary["members"] == ["r1", "r2"]
    assert sum(summary["weights"]) == pytest.approx(1.0)
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == len(y) and {"p_a", "p_b", "p_c"} <= set(oof.columns)
    y_saved = oof["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert summary["oof_score"] == pytest.approx(
        score("log_loss", y_saved, oof[["p_a", "p_b", "p_c"]].to_numpy())
    )
    spec = read_blend(out)
    test = blend_test_probs(spec, [np.eye(3)[[0, 1]], np.eye(3)[[0, 2]]])
    assert test.shape == (2, 3) and test.sum(1) == pytest.approx([1.0, 1.0])


def test_default_members_are_the_finished_runs_on_the_same_folds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    y, folds = _truth()
    _write_run(tmp_path, "r1", y, folds, _probs(y, 0.5, 1))
    _write_run(tmp_path, "r2", y, folds, _probs(y, 0.4, 2))
    _write_run(tmp_path, "other-folds", y, (folds + 1) % 5, _probs(y, 0.4, 3))
    _write_run(tmp_path, "unfinished", y, folds, _probs(y, 0.4, 4), finished=False)
    assert [m.name for m in load_members("toy", None)] == ["r1", "r2"]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("folds", "different folds"),
        ("unfinished", "did not finish"),
        ("single", "at least two"),
        ("twice", "^r1 is named twice"),
        ("no_oof", "oof.csv is missing"),
        ("unknown", "no run 'nope'"),
        ("blend", 'blend-.* is a blend, .*RUNS="r1 r2'),
    ],
)
def test_blend_refuses_in_one_line(tmp_path, monkeypatch, case, expected):
    monkeypatch.chdir(tmp_path)
    y, folds = _truth()
    _write_run(tmp_path, "r1", y, folds, _probs(y, 0.5, 1))
    names = ["r1", "r2"]
    if case == "folds":
        _write_run(tmp_path, "r2", y, (folds + 1) % 5, _probs(y, 0.4, 2))
    elif case == "unfinished":
        _write_run(tmp_path, "r2", y, folds, _probs(y, 0.4, 2), finished=False)
    elif case == "single":
        names = ["r1"]
    elif case == "twice":
        names = ["r1", "r1"]
    elif case == "no_oof":
        (_write_run(tmp_path, "r2", y, folds, _probs(y, 0.4, 2)) / "oof.csv").unlink()
    elif case == "unknown":
        names = ["r1", "nope"]
    elif case == "blend":  # a blend of blends: its test predictions could never be made
        _write_run(tmp_path, "r2", y, folds, _probs(y, 0.4, 2))
        names = [blend("toy", ["r1", "r2"]).name, "r1"]
    with pytest.raises(UserError, match=expected) as e:
        blend("toy", names)
    assert "\n" not in str(e.value)


def test_roc_auc_blends_rank_averages():
    y, folds = _truth()
    yb = (y == 0).astype(int)
    a = np.stack([1 - _probs(yb, 0.3, 1)[:, 0], _probs(yb, 0.3, 1)[:, 0]], 1)
    b = a**3  # same order, other calibration: its ranks equal a's
    fit = fit_blend("roc_auc", yb, folds, [a, b])
    assert score("roc_auc", yb, fit["oof"]) == pytest.approx(score("roc_auc", yb, a), abs=0.02)


@pytest.mark.parametrize("case", ["gone", "blend"])
def test_submitting_a_blend_whose_member_cannot_be_predicted_gives_advice_that_works(digits, case, capsys):
    """A member deleted since the blend (or a blend as member, made before those were refused): the
    advice is to retrain it or blend again, never to submit what is not there."""
    from helpers.cli import cli_text
    from kagglecv.cli import main

    runs = digits / "runs" / "digits-demo"
    blend_dir = runs / "blend-x"
    blend_dir.mkdir(parents=True)
    name = "r9" if case == "gone" else "blend-y"
    spec = {"members": [name, "r8"], "weights": [0.5, 0.5], "metric": "accuracy", "classes": CLASSES}
    (blend_dir / "blend.json").write_text(json.dumps(spec))
    (blend_dir / "config.yaml").write_text(json.dumps({"blend": spec["members"]}))
    summary = {"kind": "blend", "metric": "accuracy", "cv_mean": 0.5, "folds": 2, "fold_ids": [0, 1]}
    (blend_dir / "summary.json").write_text(json.dumps(summary))
    if case == "blend":
        shutil.copytree(blend_dir, runs / name)
    assert main(["submit", "-c", "digits-demo", "-r", "blend-x"]) == 2
    said = cli_text(capsys)
    assert name in said and "make blend RUNS=" in said and "make submit" not in said
    assert ("retrain it" in said) == (case == "gone")


def test_report_on_a_blend_speaks_of_its_members_never_retraining_it(tmp_path, monkeypatch, capsys):
    """A blend has no fold models and no epochs: the report says what it is made of, and its look
    inside section points at a member instead of asking to retrain the blend."""
    from helpers.cli import cli_text
    from helpers.runs import write_synthetic_run
    from kagglecv.report.page import write_report

    monkeypatch.chdir(tmp_path)
    for i in (1, 2):
        write_synthetic_run(tmp_path / "runs" / "dogs" / f"r{i}", 4, per_class=10, seed=i)
    out = blend("dogs", ["r1", "r2"])
    page = write_report(out, look=None).read_text()
    said = cli_text(capsys)
    assert "retrain" not in said + page and "None" not in said
    assert f"{out.name} is a blend of r1, r2" in said and "RUN=<member> LOOK=1" in said
    assert "blend of r1" in page and " px" not in page
    with pytest.raises(UserError, match="is a blend of r1, r2") as e:
        write_report(out, look=True)
    assert "retrain" not in str(e.value)


def test_runs_table_shows_whole_sizes_and_epochs_and_a_dash_for_a_blend(workdir, capsys):
    """A blend has no image size or epochs of its own: its empty cells must not turn the columns into
    floats (32.0000 in the table, 32.0 in runs.csv, a blank epoch column)."""
    from kagglecv.cli import main

    y, folds = _truth()
    for i, name in enumerate(("r1", "r2"), start=1):
        run = _write_run(workdir, name, y, folds, _probs(y, 0.5 - i / 10, i), "accuracy", slug="digits-demo")
        (run / "config.yaml").write_text("model: resnet18\nimg_size: 32\nepochs: 3\nfreeze_epochs: 1\n")
    made = blend("digits-demo", ["r1", "r2"])
    capsys.readouterr()
    assert main(["runs", "-c", "digits-demo"]) == 0
    said = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[3:5]]
            for line in said.splitlines() if line.count("│") > 5}  # fmt: skip
    assert rows["r1"] == ["32", "4"] and rows["r2"] == ["32", "4"]
    assert rows[made.name] == ["-", "-"] and "32.0" not in said
    csv = (workdir / "runs" / "digits-demo" / "runs.csv").read_text()
    assert ",32,4," in csv and "32.0" not in csv
    assert "32.0" not in (workdir / "runs" / "digits-demo" / "runs.html").read_text()


# ---- a blend against its members over time ---------------------------------------------------


def _two_runs(root, slug="toy", same=False):
    y, folds = _truth()
    _write_run(root, "r1", y, folds, _probs(y, 0.5, 1), "accuracy", slug=slug)
    _write_run(root, "s2", y, folds, _probs(y, 0.5, 1 if same else 2), "accuracy", slug=slug)
    return y, folds


def test_blend_weights_do_not_depend_on_the_order_of_runs(tmp_path, monkeypatch):
    """Both orders make the same blend id: they must make the same blend, not replace each other."""
    monkeypatch.chdir(tmp_path)
    _two_runs(tmp_path, same=True)  # equal members: greedy ties used to go to the one named first
    a = blend("toy", ["r1", "s2"])
    first = [(a / n).read_text() for n in ("blend.json", "oof.csv")]
    b = blend("toy", ["s2", "r1"])
    assert a == b and [(b / n).read_text() for n in ("blend.json", "oof.csv")] == first


def _retrain(root, slug, name="s2"):
    """s2 trained again under its name: another OOF and another finished_at."""
    y, folds = _truth()
    run = root / "runs" / slug / name
    for f in ("oof.csv", "summary.json"):
        (run / f).unlink()
    _write_run(root, f"{name}.tmp", y, folds, _probs(y, 0.3, 7), "accuracy", slug=slug)
    for f in ("oof.csv", "summary.json"):
        (run.parent / f"{name}.tmp" / f).rename(run / f)
    shutil.rmtree(run.parent / f"{name}.tmp")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "finished_at": time.time()}))


def _cache(run, n=4):
    from kagglecv.core.run_files import write_test_cache

    probs = np.full((n, 3), 1 / 3)
    write_test_cache(run, probs, {"images": [f"test/{i}.png" for i in range(n)], "classes": ["a", "b", "c"]})


@pytest.mark.parametrize("command", ["report", "pseudo", "submit"])
def test_a_member_trained_again_under_its_name_stops_its_old_blend(digits, command, capsys):
    from helpers.cli import cli_text
    from kagglecv.cli import main
    from kagglecv.report.analysis import load_run
    from kagglecv.train.pseudo import source_probs

    slug = "digits-demo"
    _two_runs(digits, slug)
    made = blend(slug, ["r1", "s2"])
    for name in ("r1", "s2"):
        _cache(digits / "runs" / slug / name)
    assert load_run(made) and source_probs(slug, made.name)  # the runs it was fitted on: fine
    _retrain(digits, slug)
    _cache(digits / "runs" / slug / "s2")
    if command == "submit":
        assert main(["submit", "-c", slug, "-r", made.name]) == 2
        said = cli_text(capsys)
    else:
        with pytest.raises(UserError) as e:
            load_run(made) if command == "report" else source_probs(slug, made.name)
        said = str(e.value)
    assert "fitted on an earlier run s2" in said and 'make blend RUNS="r1 s2"' in said, said
    assert "\n" not in said.strip()
    spec = json.loads((made / "blend.json").read_text())  # a blend from before fingerprints: as before
    del spec["fingerprints"]
    (made / "blend.json").write_text(json.dumps(spec))
    assert load_run(made) and source_probs(slug, made.name)


def test_make_runs_forgets_a_blends_test_score_once_it_is_fitted_again(workdir):
    from kagglecv.cli import main

    slug = "digits-demo"
    _two_runs(workdir, slug)
    made = blend(slug, ["r1", "s2"])
    (workdir / "submissions").mkdir()
    old = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    record = {"competition": slug, "run": made.name, "test_score": 0.75, "written_at": old}
    (workdir / "submissions" / f"{slug}-{made.name}.json").write_text(json.dumps(record))
    assert main(["runs", "-c", slug]) == 0
    rows = pd.read_csv(workdir / "runs" / slug / "runs.csv").set_index("run")
    assert pd.isna(rows.loc[made.name, "test_score"])  # submitted before this fit: not its score
    record["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 1))
    (workdir / "submissions" / f"{slug}-{made.name}.json").write_text(json.dumps(record))
    assert main(["runs", "-c", slug]) == 0
    rows = pd.read_csv(workdir / "runs" / slug / "runs.csv").set_index("run")
    assert rows.loc[made.name, "test_score"] == 0.75


@pytest.mark.parametrize("command", ["export", "predict", "kernel"])
def test_commands_that_need_models_default_to_the_latest_training_run(digits, command, capsys):
    """The latest run is a blend: export, predict and kernel take the latest training run instead of
    picking the blend and refusing it."""
    from helpers.cli import cli_text
    from kagglecv.cli import main

    slug = "digits-demo"
    _two_runs(digits, slug)
    for i, name in enumerate(("r1", "s2")):
        path = digits / "runs" / slug / name / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "finished_at": time.time() - 100 + i}))
    blend(slug, ["r1", "s2"])
    args = {"export": [], "predict": ["--img", str(next((digits / "data").rglob("*.png")))], "kernel": []}
    main([command, "-c", slug, *args[command]])
    said = cli_text(capsys)
    assert "using run s2" in said and "the latest of 2 finished training runs" in said, said
    assert "is a blend" not in said


def test_make_train_refuses_an_existing_blends_folder_as_run(workdir, capsys):
    from helpers.cli import cli_text
    from kagglecv.cli import main

    _two_runs(workdir, "digits-demo")
    made = blend("digits-demo", ["r1", "s2"])
    assert main(["train", "-c", "digits-demo", "--run", made.name]) == 2
    said = cli_text(capsys)
    assert f"{made.name} is a blend" in said and "not a training run" in said and "config key" not in said


def test_a_run_that_trained_the_folds_it_was_asked_for_is_finished_everywhere(workdir, capsys):
    """train_folds=2 of 5: finished (2/5) in `make runs`, for RESUME=1 and for the default run; a run
    asked for 5 folds whose summary lists 2 is unfinished in all three."""
    from helpers.cli import cli_text
    from kagglecv.cli import main

    slug = "digits-demo"
    y, folds = _truth()
    base = workdir / "runs" / slug
    for name, planned in (("two", [0, 1]), ("five", [0, 1, 2, 3, 4])):
        run = _write_run(workdir, name, y, folds, _probs(y, 0.5, 1), "accuracy", slug=slug)
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "fold_ids": [0, 1], "finished_at": 1.0}))
        (run / "plan.json").write_text(json.dumps({"fold_ids": planned, "n_folds": 5}))
    assert main(["runs", "-c", slug]) == 0
    rows = pd.read_csv(base / "runs.csv").set_index("run")
    assert rows.loc["two", "state"] == "finished" and rows.loc["five", "state"] == "unfinished"
    assert find_run(slug, None).name == "two" and "the latest of 1 finished run;" in cli_text(capsys)
    assert latest_unfinished(slug).name == "five"
    (base / "five").rename(base / "five-moved")
    (base / "five-moved" / "plan.json").unlink()  # old runs without plan.json: summary.json decides
    with pytest.raises(UserError, match="every run .* finished"):
        latest_unfinished(slug)
