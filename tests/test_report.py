"""The run report: a real tiny training on two colour classes with a few labels flipped on purpose,
then report.html (rendered in headless Chromium where installed), its figures and suspect_labels.csv."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from helpers.runs import write_synthetic_run
from kagglecv.cli import main

REPO = Path(__file__).resolve().parent.parent
PER_CLASS = 32
FLIPPED = {"red": [2, 11, 25], "blue": [5, 22]}  # image numbers whose label folds.csv swaps

COMPETITION = {
    "slug": "colours",
    "title": "two colour classes (test)",
    "source": {"kind": "folder"},
    "layout": {"kind": "csv_pixels"},
    "submission": {"id_column": "id", "label_columns": ["label"], "kind": "class_name"},
    "metric": "accuracy",
    "n_folds": 2,
}


def write_colours(root: Path) -> set[str]:
    """data/colours/ in the prepared shape: noisy red and blue squares, folds.csv with flipped labels."""
    rng = np.random.default_rng(0)
    data = root / "data" / "colours"
    rows = []
    for cls, rgb in (("blue", (40, 60, 200)), ("red", (200, 50, 40))):
        (data / "train" / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            img = np.clip(rng.normal(rgb, 35, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            name = f"train/{cls}/{i:02d}.png"
            Image.fromarray(img).save(data / name)
            rows.append((name, cls, i % 2))
    folds = pd.DataFrame(rows, columns=["image", "label", "fold"])
    flipped = set()
    for cls, ids in FLIPPED.items():
        for i in ids:
            name = f"train/{cls}/{i:02d}.png"
            folds.loc[folds["image"] == name, "label"] = "blue" if cls == "red" else "red"
            flipped.add(name)
    folds.to_csv(data / "folds.csv", index=False)
    (data / "test").mkdir()
    info = {"competition": "colours", "classes": ["blue", "red"], "n_train": len(folds), "n_folds": 2}
    (data / "prepared.json").write_text(json.dumps(info))
    (root / "competitions" / "colours.yaml").write_text(yaml.safe_dump(COMPETITION))
    return flipped


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """One real run (LR range test, then 2 folds x 6 epochs of timm's test_resnet, ~5 s) through `kagglecv train`,
    which ends by writing the report."""
    root = tmp_path_factory.mktemp("colours")
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "competitions").mkdir()
    flipped = write_colours(root)
    old, env = os.getcwd(), os.environ.get("KAGGLECV_NO_PROGRESS")
    os.chdir(root)
    os.environ["KAGGLECV_NO_PROGRESS"] = "1"
    try:
        args = [
            *("epochs=6", "batch_size=4", "label_smoothing=0", "rotate=0", "shift=0", "scale=0"),
            *("lr=auto", "lr_find_iters=40", "lr_find_start=1e-4", "lr_find_end=0.1"),
        ]
        assert main(["train", "--comp", "colours", "--config", "configs/smoke.yaml", *args]) == 0
    finally:
        os.chdir(old)
        if env is None:
            os.environ.pop("KAGGLECV_NO_PROGRESS", None)
    (run_dir,) = (root / "runs" / "colours").iterdir()
    return root, run_dir, flipped


@pytest.mark.slow  # `colour_run` trains for this module: ~9 s
def test_flipped_labels_rank_first(colour_run):
    _, run_dir, flipped = colour_run
    suspects = pd.read_csv(run_dir / "suspect_labels.csv")
    top = suspects.head(len(flipped))
    assert set(top["image"]) == flipped, suspects.head(10)
    # the suggestion is the class the image really shows (its folder), the label is the flipped one
    assert (top["suggested"] == top["image"].str.split("/").str[1]).all()
    assert (top["label"] != top["suggested"]).all()
    assert list(top["rank"]) == list(range(1, len(flipped) + 1))
    assert (top["p_suggested"] > 0.5).all() and (top["margin"] > 0).all()


def embedded_pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(b, validate=True) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


@pytest.mark.slow  # needs `colour_run` (a training, ~9 s)
def test_report_is_self_contained_and_complete(colour_run):
    root, run_dir, _ = colour_run
    page = (run_dir / "report.html").read_text()
    pngs = embedded_pngs(page)
    saved = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert saved == sorted(
        f"{n}.png"
        for n in (
            "lr_find",
            "curves",
            "confusion_counts",
            "confusion_normalized",
            "top_losses",
            "suspect_labels",
        )
    )
    assert len(pngs) == len(saved) == page.count("<img")
    for png in pngs:  # every embedded image is a whole, decodable PNG
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    assert sorted(pngs) == sorted((run_dir / "figures" / n).read_bytes() for n in saved)
    # nothing is fetched from elsewhere: one file is the whole report
    assert not re.search(r'(src|href)="(?!data:)', page)
    for heading in (
        "Cross-validation",
        "Config",
        "Learning-rate range test",
        "Training curves",
        "Confusion matrix",
        "Most confused pairs",
        "Per-class precision, recall, F1",
        "Top losses",
        "Suspect labels",
    ):
        assert f">{heading}" in page, heading
    assert "model: test_resnet" in page and "no test score yet" in page
    assert not list(run_dir.rglob("*.tmp*"))  # no temporary file left behind


def chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHECK = """<script>
console.log("kagglecv-check: script ran");
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt);
  document.body.setAttribute("data-check", JSON.stringify({n: imgs.length, bad: bad}));
});
</script>"""


@pytest.mark.slow  # needs `colour_run` (a training, ~9 s)
def test_report_renders_in_headless_chromium(colour_run, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not installed (`apt-get install chromium`; .ci/run installs it)")
    _, run_dir, _ = colour_run
    page = (run_dir / "report.html").read_text()
    # the report itself has no script; a copy with a checker appended asks the browser about each image
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",  # let load handlers run before the DOM is dumped
        "--dump-dom",
        probe.as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    # our own log line proves console capture works; anything else is an error the page caused
    assert any("kagglecv-check: script ran" in line for line in console), res.stderr[-2000:]
    assert [line for line in console if "kagglecv-check" not in line] == []
    found = re.search(r'data-check="([^"]*)"', res.stdout)
    assert found, res.stdout[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check == {"n": page.count("<img"), "bad": []}


@pytest.mark.slow  # ~6 s, and needs `colour_run` (a training, ~9 s)
def test_cli_report_reprints_tables(colour_run, capsys, monkeypatch):
    root, run_dir, _ = colour_run
    monkeypatch.chdir(root)
    monkeypatch.setenv("KAGGLECV_NO_PROGRESS", "1")
    before = (run_dir / "suspect_labels.csv").read_text()
    assert main(["report", run_dir.name, "--comp", "colours"]) == 0
    out = capsys.readouterr().out
    assert "CV" in out and "OOF" in out and "most confused pairs" in out and "report ->" in out
    # the pairs table shows each confused pair with the count the confusion matrix holds
    cm = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0)
    for true, pred in (("blue", "red"), ("red", "blue")):
        found = re.search(rf"│ {true}\s+│ {pred}\s+│\s+(\d+) │", out)
        assert found and int(found.group(1)) == cm.loc[true, pred], out
    assert (run_dir / "suspect_labels.csv").read_text() == before  # same run, same answer


@pytest.mark.parametrize("n_classes", [2, 120])
def test_report_many_classes_and_missing_pieces(tmp_path, n_classes, capsys):
    from kagglecv.report.page import CM_MAX_CLASSES, write_report

    run_dir = tmp_path / "runs" / "dogs" / "r1"
    write_synthetic_run(run_dir, n_classes)
    bare = n_classes > 2  # also without metrics.csv and config.yaml
    if bare:
        (run_dir / "metrics.csv").unlink()
        (run_dir / "config.yaml").unlink()
    write_report(run_dir, data_dir=tmp_path / "nowhere")
    page = (run_dir / "report.html").read_text()
    assert ("No usable metrics.csv" in page) == bare and ("config.yaml not found" in page) == bare
    assert (run_dir / "figures" / "curves.png").exists() != bare
    assert "No range test in this run: lr was fixed at 1.00e-03" in page
    assert "no test score yet" in page and "images were not found under" in page
    assert not (run_dir / "figures" / "lr_find.png").exists()
    assert ("classes with the most errors" in page) == (n_classes > CM_MAX_CLASSES)
    cm = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0)
    assert cm.shape == (n_classes, n_classes) and cm.to_numpy().sum() == n_classes * 5
    with Image.open(run_dir / "figures" / "confusion_counts.png") as im:
        assert im.width < 1400 and im.height < 1400  # 120 classes still fit a screen: a subset is drawn
    out = capsys.readouterr().out
    assert "most confused pairs" in out
    for png in embedded_pngs(page):
        Image.open(io.BytesIO(png)).load()
    assert pd.read_csv(run_dir / "suspect_labels.csv").columns[0] == "rank"


def test_confused_subset_keeps_the_classes_with_errors():
    from kagglecv.report.page import confusion_subset, most_confused

    cm = np.diag(np.full(120, 10))
    cm[7, 7], cm[7, 99] = 4, 6  # class 7 is taken for 99 six times
    cm[50, 50], cm[50, 3] = 8, 2
    idx = confusion_subset(cm, k=20)
    assert len(idx) == 20 and {7, 99, 50, 3} <= set(idx.tolist())
    pairs = most_confused(cm, [str(i) for i in range(120)])
    assert pairs.iloc[0].tolist()[:3] == ["7", "99", 6] and len(pairs) == 2


def test_report_user_errors(workdir, capsys):
    assert main(["report", "nope", "--comp", "digits-demo"]) == 2
    assert "no run 'nope'" in capsys.readouterr().out
    half = workdir / "runs" / "digits-demo" / "half"
    half.mkdir(parents=True)
    assert main(["report", "half", "--comp", "digits-demo"]) == 2
    assert "is not a run folder" in capsys.readouterr().out
    (half / "config.yaml").write_text("model: test_resnet\n")  # a run that started, then stopped
    assert main(["report", "half", "--comp", "digits-demo"]) == 2
    assert "did not finish" in capsys.readouterr().out
    (half / "summary.json").write_text(json.dumps({"competition": "digits-demo", "run": "half"}))
    assert main(["report", str(half)]) == 2
    assert "no oof.csv" in capsys.readouterr().out
    assert not (half / "report.html").exists()


def test_weak_model_gets_a_caution_not_just_accusations(workdir, capsys):
    """Suspects from a model that barely beats guessing come with a warning, on the page and the terminal."""
    from kagglecv.report.page import write_report

    run = workdir / "runs" / "toy" / "weak"
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], size=40)
    oof = pd.DataFrame(
        {
            "image": [f"train/a/{i}.png" for i in range(40)],
            "label": ["a", "b"] * 20,
            "fold": [i % 2 for i in range(40)],
            "p_a": probs[:, 0],
            "p_b": probs[:, 1],
        }
    )
    oof["pred"] = np.where(oof["p_a"] > 0.5, "a", "b")
    oof.to_csv(run / "oof.csv", index=False)
    (run / "summary.json").write_text(
        json.dumps(
            {
                "competition": "toy",
                "run": "weak",
                "metric": "accuracy",
                "fold_ids": [0, 1],
                "fold_scores": [0.5, 0.5],
                "cv_mean": 0.5,
                "cv_std": 0.0,
                "oof_score": 0.5,
            }
        )
    )
    write_report(run, workdir / "data" / "toy")
    assert "caution:" in " ".join(capsys.readouterr().out.split())
    assert "Caution:" in (run / "report.html").read_text()


def test_class_names_print_literally_in_every_table(tmp_path, capsys):
    """rich markup in a class name ('[old]', '[/x]') is text, not a style or a crash."""
    from kagglecv.report.page import write_report

    run_dir = tmp_path / "runs" / "dogs" / "r[1]"
    classes = ["dogs [old]", "cats[/x]", "[bold]birds"]
    write_synthetic_run(run_dir, 3, per_class=4, classes=classes, signal=0.5)  # every class confused
    write_report(run_dir, data_dir=tmp_path / "nowhere")
    out = capsys.readouterr().out
    for name in (*classes, "r[1]"):
        assert name in out, name
    page = (run_dir / "report.html").read_text()
    assert "dogs [old]" in page and "[bold]birds" in page


def _glyph_warnings(classes: list[str]) -> list[str]:
    import warnings

    from kagglecv.core.figures import fig_confusion, png, use_fonts

    use_fonts(classes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png(fig_confusion(np.array([[3, 1], [2, 4]]), classes, np.arange(2), normalize=False))
    return [str(w.message) for w in caught if "Glyph" in str(w.message)]


def test_cjk_class_names_are_drawn(monkeypatch):
    from kagglecv.core import figures

    if not figures.cjk_fonts():
        pytest.skip(f"no CJK font installed (`{figures.CJK_INSTALL}`; .ci/run installs it)")
    assert _glyph_warnings(["猫 cat", "犬 dog"]) == []
    # the check is real: the same figure without the fallback font misses the glyphs
    monkeypatch.setitem(figures._state, "cjk", [])
    monkeypatch.setitem(figures._state, "warned", True)
    assert _glyph_warnings(["猫 cat", "犬 dog"])


def test_no_cjk_font_is_one_warning(monkeypatch, capsys):
    from kagglecv.core import figures

    monkeypatch.setitem(figures._state, "cjk", [])
    monkeypatch.delitem(figures._state, "warned", raising=False)
    figures.use_fonts(["alpha", "beta"])
    assert capsys.readouterr().out == ""  # Latin names need no CJK font
    figures.use_fonts(["猫", "犬"])
    figures.use_fonts(["猫", "犬"])
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("no CJK font is installed") == 1 and figures.CJK_INSTALL in out


def test_near_chance_compares_with_the_majority_baseline(tmp_path, capsys):
    """40 classes at ~41% accuracy are far above the majority baseline (2.5%): no caution. A fixed
    halfway mark between that baseline and 100% flagged it."""
    from kagglecv.core.metrics import baseline_score
    from kagglecv.report.analysis import load_run, near_chance
    from kagglecv.report.page import write_report

    assert baseline_score("accuracy", np.array([0, 0, 0, 1]), 2) == 0.75  # always the majority class
    assert baseline_score("roc_auc", np.array([0, 0, 0, 1]), 2) == 0.5

    run_dir = tmp_path / "runs" / "dogs" / "many"
    write_synthetic_run(run_dir, 40, per_class=10, signal=2.0)
    run = load_run(run_dir)
    acc = float((run.pred == run.y).mean())
    assert 0.3 < acc < 0.5, acc
    assert near_chance(run) is None
    write_report(run_dir, data_dir=tmp_path / "nowhere")
    assert "caution" not in capsys.readouterr().out.lower()
    assert "Caution" not in (run_dir / "report.html").read_text()
    # under log loss the baseline is the class prior's loss: a model no better than it is near chance
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "metric": "log_loss"}))
    flat = load_run(run_dir)
    flat.probs = np.full_like(flat.probs, 1 / 40) * 0.9 + 0.1 * flat.probs
    ours, base = near_chance(flat)
    assert base == pytest.approx(np.log(40)) and ours < base
