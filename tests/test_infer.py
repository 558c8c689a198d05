"""`kagglecv predict` on new images: the same answers as `make submit`, any image the folder
source accepts, unreadable files listed, and one line for a path or a run that is not there."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.chosen_tta_run import run_with_tta_chosen
from helpers.images import odd_images
from kagglecv.core.competition import load_competition
from kagglecv.core.errors import UserError
from kagglecv.predict.new_images import (
    answer_frame,
    load_ensemble,
    predict_images,
    predict_paths,
    show_answers,
)


@pytest.fixture(scope="module")
def tta_chosen(tmp_path_factory, finished_run_built):
    """The session's finished run (2 folds x 1 epoch of test_resnet at 32 px) with its TTA choice for
    digits-demo made once and cached in it: predicting reads it instead of predicting every OOF view."""
    return run_with_tta_chosen(tmp_path_factory, finished_run_built, load_competition("digits-demo"))


@pytest.fixture
def run(digits, tta_chosen):
    """A copy of that run in this test's working folder (prepared digits-demo, as `finished_run`)."""
    rel, run_dir = tta_chosen
    return shutil.copytree(run_dir, digits / rel)


def test_predict_answers_as_submit_does(finished_run, digits):
    run = finished_run  # as train left it: submit makes the TTA choice here, as a user's would
    from kagglecv.compete.submit import submit

    comp = load_competition("digits-demo")
    submit(comp, run.name)
    sub = pd.read_csv(digits / "submissions" / f"digits-demo-{run.name}.csv")
    test = digits / "data" / "digits-demo" / "test"
    out = digits / "answers.csv"
    df = predict_images(comp, run, [str(test)], top_k=3, out=out)
    assert pd.read_csv(out).shape == df.shape and list(df.columns)[:3] == ["image", "class", "prob"]
    by_id = {int(p.rsplit("/", 1)[1].split(".")[0]): c for p, c in zip(df["image"], df["class"], strict=True)}
    assert [by_id[i] for i in sub["ImageId"]] == sub["Label"].astype(str).tolist()
    assert (df["prob"] >= df["prob_2"]).all() and (df["prob_2"] >= df["prob_3"]).all()
    assert (df["error"].fillna("") == "").all()

    from kagglecv.core.run_files import read_test_cache

    cached = read_test_cache(run)  # what submit predicted, per test image: the same probabilities here
    paths = [digits / "data" / "digits-demo" / p for p in cached["images"]]
    probs, errors = predict_paths(load_ensemble(comp, run), paths)
    assert not errors
    np.testing.assert_allclose(probs, cached["probs"], atol=1e-5, rtol=0)


def test_any_image_the_folder_source_takes_and_unreadable_listed(run, digits, capsys):
    comp = load_competition("digits-demo")
    odd_images(digits / "odd")
    files = sorted(p for p in (digits / "odd").rglob("*") if not p.is_dir())
    ens = load_ensemble(comp, run)
    probs, errors = predict_paths(ens, files)
    names = [p.name for p in files]
    assert sorted(names[i] for i in errors) == ["broken.jpg", "empty.png", "gone.jpg", "notes.txt"]
    by = {n: probs[i] for i, n in enumerate(names)}
    assert not np.isnan(probs[[i for i in range(len(names)) if i not in errors]]).any()
    for lossless in ("grey16.png", "palette.png", "rgba.png", "nested.webp"):
        assert np.isfinite(by[lossless]).all()
    np.testing.assert_allclose(by["rgba.png"], by["plain.png"], atol=1e-6)  # opaque alpha changes nothing
    np.testing.assert_allclose(by["exif.png"], by["exif_twin.png"], atol=1e-6)  # turned upright first
    assert np.abs(by["cmyk.jpg"] - by["plain.png"]).max() < 0.05  # CMYK decoded as colour, not garbage

    # the whole folder through predict_images: one table, the unreadable ones named, not fatal
    (digits / "answers").mkdir()
    df = predict_images(comp, run, [str(digits / "odd")], top_k=2, out=digits / "answers")
    text = capsys.readouterr().out
    assert "3 file(s) could not be read" in text and "broken.jpg" in text and "notes.txt" not in text
    assert "gone.jpg: No such file or directory" in text
    (csv,) = (digits / "answers").glob(f"digits-demo-{run.name}-*.csv")  # --out a folder: the name inside
    assert len(pd.read_csv(csv)) == len(df)
    assert len(df) == len(names) - 1  # the folder search keeps image extensions only
    assert df.loc[df["error"] != "", "class"].isna().all()


def test_globs_files_and_folders_each_once(run, digits):
    comp = load_competition("digits-demo")
    test = digits / "data" / "digits-demo" / "test"
    df = predict_images(
        comp,
        run,
        [str(test / "1.png"), str(test / "1?.png"), str(test / "1.png")],
        top_k=1,
        out=digits / "a.csv",
    )
    assert [p.rsplit("/", 1)[1] for p in df["image"]] == ["1.png"] + [f"1{d}.png" for d in range(10)]
    assert list(df.columns) == ["image", "class", "prob", "error"]


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        (["nowhere/cat.jpg"], "nowhere/cat.jpg does not exist"),
        (["nowhere/*.jpg"], "matches no file"),
        (["empty"], "folder empty holds no image"),
        ([], "no images given"),
    ],
)
def test_bad_paths_are_one_line(workdir, tta_chosen, inputs, says):
    # the inputs are checked before any model loads or data is read: the run alone, no prepared data
    rel, run_dir = tta_chosen
    run = shutil.copytree(run_dir, workdir / rel)
    (workdir / "empty").mkdir()
    with pytest.raises(UserError, match=says.replace("*", r"\*")) as e:
        predict_images(load_competition("digits-demo"), run, inputs)
    assert "\n" not in str(e.value)


def test_a_missing_image_is_named_before_a_missing_run(workdir, capsys):
    """`kagglecv predict` with a typo in the path and no run trained yet: the path is what it names."""
    from helpers.cli import cli_text
    from kagglecv.cli import main

    assert main(["predict", "-c", "digits-demo", "nowhere/cat.jpg"]) == 2
    text = cli_text(capsys)
    assert "nowhere/cat.jpg does not exist" in text and "run" not in text, text


def test_run_without_finished_fold_is_one_line(run, digits):
    comp = load_competition("digits-demo")
    test = str(digits / "data" / "digits-demo" / "test" / "1.png")
    for p in run.glob("fold*.pt"):
        p.unlink()
    with pytest.raises(UserError, match="no finished fold"):
        predict_images(comp, run, [test])
    (run / "summary.json").unlink()
    with pytest.raises(UserError, match="did not finish"):
        predict_images(comp, run, [test])
    shutil.rmtree(run)
    assert not (digits / "predictions").exists()


def test_table_escapes_class_names_and_caps_top_k(capsys):
    classes = ["[red]stop[/red]", "plain"]
    probs = np.array([[0.9, 0.1], [np.nan, np.nan]])
    from pathlib import Path

    df = answer_frame([Path("a[b].jpg"), Path("bad.jpg")], probs, {1: "cannot decode"}, classes, top_k=5)
    assert list(df.columns) == ["image", "class", "prob", "class_2", "prob_2", "error"]
    show_answers(df, 5)
    text = capsys.readouterr().out
    assert "[red]stop[/red]" in text and "a[b].jpg" in text and "bad.jpg: cannot decode" in text


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims width x height pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 99))
        + chunk(b"IEND", b"")
    )


def _exported(comp, run, folder: Path) -> Path:
    """What `make export` writes for predict.py to read (weights, model.json, the script), without
    the ONNX graph and its parity check, which are not what this compares."""
    import json
    from importlib import resources

    from kagglecv.ship.export import model_spec, write_weights

    folder.mkdir()
    ens = load_ensemble(comp, run)
    weights = write_weights(ens, folder)
    (folder / "model.json").write_text(json.dumps(model_spec(comp, ens, weights)))
    template = resources.files("kagglecv.ship") / "templates" / "export_predict.py"
    (folder / "predict.py").write_text(template.read_text())
    return folder


@pytest.mark.slow  # ~11 s: two runs of the script, each importing torch and timm
def test_the_exported_script_and_kagglecv_predict_answer_the_same_inputs_alike(run, digits, monkeypatch):
    """The same inputs (folders, a GIF, an image over the pixel cap, hidden, empty and vanished files,
    a file named twice) through `kagglecv predict` and the exported predict.py: the same rows in the
    same order, the same reasons for the unreadable ones, the same answers; an empty folder is the
    same one-line error in both."""
    import subprocess
    import sys

    from PIL import Image

    comp = load_competition("digits-demo")
    out = _exported(comp, run, digits / "export")
    monkeypatch.chdir(digits)
    test = sorted(Path("data/digits-demo/test").glob("*.png"))[:4]
    (Path("inputs") / "sub").mkdir(parents=True)
    for i, p in enumerate(test):
        shutil.copy(p, Path("inputs") / ("sub" if i == 3 else "") / p.name)
    Image.open(test[0]).convert("RGB").save("inputs/anim.gif")  # not an extension either takes
    Path("inputs/huge.png").write_bytes(
        _png_claiming(11_000, 10_000)
    )  # over MAX_PIXELS, under Pillow's own cap
    Path("inputs/.hidden.png").write_bytes(test[0].read_bytes())  # hidden: neither reads it
    Path("inputs/empty.png").write_bytes(b"")
    Path("inputs/gone.png").symlink_to("nowhere.png")
    Path("empty").mkdir()
    inputs = ["inputs", "inputs/anim.gif", f"inputs/{test[0].name}", "inputs/s*/*.png"]

    ours = predict_images(comp, run, inputs, top_k=1, out=Path("ours.csv"))
    script = [sys.executable, str(out / "predict.py"), "--device", "cpu"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*script, *inputs, "--out", "theirs.csv"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = pd.read_csv("theirs.csv", dtype=str, keep_default_na=False)
    assert theirs["image"].tolist() == ours["image"].tolist()
    assert len(ours) == 8 and "inputs/.hidden.png" not in ours["image"].tolist()
    assert theirs["error"].tolist() == ours["error"].tolist()
    errors = dict(zip(ours["image"], ours["error"], strict=True))
    assert errors["inputs/anim.gif"] == "extension .gif is not an image's"
    assert errors["inputs/huge.png"] == "cannot decode (11000x10000 pixels)"
    assert errors["inputs/empty.png"] == "empty file" and errors["inputs/gone.png"]
    read = ours["error"] == ""
    assert read.sum() == 4 and theirs.loc[read, "class"].tolist() == ours.loc[read, "class"].tolist()
    np.testing.assert_allclose(
        theirs.loc[read, "prob"].astype(float), ours.loc[read, "prob"], atol=1e-5, rtol=0
    )

    with pytest.raises(UserError) as e:
        predict_images(comp, run, ["empty"])
    done = subprocess.run([*script, "empty"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {e.value}"


def test_the_exported_script_keeps_kagglecvs_extensions_and_pixel_cap():
    """predict.py must run without kagglecv, so it holds copies of the two values that decide which
    files are read: they must stay equal to kagglecv's own."""
    import ast
    from importlib import resources

    from kagglecv import MAX_PIXELS
    from kagglecv.core.images import IMAGE_EXTS

    text = (resources.files("kagglecv.ship") / "templates" / "export_predict.py").read_text()
    values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(text).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in ("IMAGE_EXTS", "MAX_PIXELS")
    }
    assert values == {"IMAGE_EXTS": IMAGE_EXTS, "MAX_PIXELS": MAX_PIXELS}


@pytest.mark.parametrize("target", ["the input", "oof.csv", "new file in the run", "a user's csv", "a link"])
def test_predict_never_writes_over_what_it_did_not_write(run, digits, capsys, target):
    """`predict -o` overwrote any file: the image it was asked about, a run's oof.csv, the user's CSV."""
    from helpers.cli import cli_text
    from kagglecv.cli import main

    image = (
        digits
        / "data"
        / "digits-demo"
        / "test"
        / sorted(p.name for p in (digits / "data" / "digits-demo" / "test").iterdir())[0]
    )
    (digits / "mine.csv").write_text("id,label\n1,cat\n")
    (digits / "link.csv").symlink_to(digits / "mine.csv")
    out = {
        "the input": image,
        "oof.csv": run / "oof.csv",
        "new file in the run": run / "answers.csv",
        "a user's csv": digits / "mine.csv",
        "a link": digits / "link.csv",
    }[target]
    before = {p: p.read_bytes() for p in digits.rglob("*") if p.is_file() and not p.is_symlink()}
    args = ["predict", str(image), "--comp", "digits-demo", "--run", run.name, "-o", str(out)]
    assert main(args) == 2
    said = cli_text(capsys).split("error:")[-1]
    assert "give -o a new file name or a folder" in said, said
    assert {p: p.read_bytes() for p in digits.rglob("*") if p.is_file() and not p.is_symlink()} == before
    assert not (run / "answers.csv").exists()


def test_predict_replaces_its_own_earlier_answer(run, digits):
    comp = load_competition("digits-demo")
    test = sorted((digits / "data" / "digits-demo" / "test").iterdir())
    out = digits / "answers.csv"
    predict_images(comp, run, [str(test[0])], top_k=1, out=out)
    predict_images(comp, run, [str(p) for p in test[:2]], top_k=2, out=out)  # asked again by name
    assert pd.read_csv(out)["image"].tolist() == [str(p) for p in test[:2]]
    (digits / "answers").mkdir()
    predict_images(comp, run, [str(test[0])], out=digits / "answers")  # a folder: a new name inside
    assert len(list((digits / "answers").glob("digits-demo-*.csv"))) == 1


def test_predict_to_a_folder_that_does_not_exist_yet_makes_it(run, digits, capsys):
    """-o newdir/ (not there yet) wrote a CSV FILE named newdir; a trailing / names a folder."""
    from helpers.cli import cli_text
    from kagglecv.cli import main

    image = str(sorted((digits / "data" / "digits-demo" / "test").iterdir())[0])
    base = ["predict", image, "--comp", "digits-demo", "--run", run.name, "-o"]
    assert main([*base, str(digits / "newdir" / "deeper") + "/"]) == 0
    written = list((digits / "newdir" / "deeper").glob(f"digits-demo-{run.name}-*.csv"))
    assert len(written) == 1 and pd.read_csv(written[0])["image"].tolist() == [image]
    (digits / "mine.csv").write_text("id,label\n1,cat\n")
    assert main([*base, str(digits / "mine.csv") + "/"]) == 2
    assert "mine.csv is a link or a file, not a folder" in cli_text(capsys)
    assert (digits / "mine.csv").read_text() == "id,label\n1,cat\n"


@pytest.mark.slow  # ~8 s: the exported script runs twice, each importing torch and timm
def test_an_unreadable_image_is_said_plainly_and_alone_writes_no_csv(run, digits, monkeypatch, capsys):
    """`echo notimg > bad.png`: "cannot decode (cannot identify image file <_io.BytesIO object at
    0x7f…>)", and with nothing else a CSV of 0 predictions and exit 0. Now a plain reason, and when
    no file could be read one error line, exit 2 and no CSV, from kagglecv predict and the exported
    predict.py alike."""
    import subprocess
    import sys

    from helpers.cli import cli_text
    from kagglecv.cli import main

    comp = load_competition("digits-demo")
    script = [sys.executable, str(_exported(comp, run, digits / "export") / "predict.py"), "--device", "cpu"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    monkeypatch.chdir(digits)
    Path("bad.png").write_text("notimg\n")
    shutil.copy(sorted(Path("data/digits-demo/test").glob("*.png"))[0], "good.png")
    reason = "cannot decode (not an image Pillow or OpenCV can read)"
    ours = predict_images(comp, run, ["bad.png", "good.png"], out="ours.csv")
    done = subprocess.run(
        [*script, "bad.png", "good.png", "--out", "theirs.csv"], capture_output=True, text=True, env=env
    )
    theirs = pd.read_csv("theirs.csv", dtype=str, keep_default_na=False)
    assert done.returncode == 0 and ours["error"].tolist() == theirs["error"].tolist() == [reason, ""], (
        done.stderr
    )
    capsys.readouterr()

    assert main(["predict", "bad.png", "--comp", "digits-demo", "--run", run.name, "-o", "alone.csv"]) == 2
    said = cli_text(capsys).split("error: ")[-1]
    assert said == f"no image could be read (bad.png: {reason}): nothing predicted, no CSV written", said
    done = subprocess.run([*script, "bad.png", "--out", "alone.csv"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {said}", done.stderr
    assert not Path("alone.csv").exists()
