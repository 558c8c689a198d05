"""`make export`: safetensors + model.json + a standalone predict.py + an ONNX model checked against
PyTorch; the folder predicts without kagglecv, and is never left looking complete when it is not."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kagglecv.ship.export as export_mod
from helpers.chosen_tta_run import run_with_tta_chosen
from kagglecv.core.competition import load_competition
from kagglecv.core.errors import UserError
from kagglecv.core.images import decode
from kagglecv.ml.data import squash
from kagglecv.predict.new_images import load_ensemble, predict_paths
from kagglecv.ship.export import export_run

TEMPLATE = Path(export_mod.__file__).parent / "templates" / "export_predict.py"
# The exported script run as a user without kagglecv would: isolated mode (-I: no PYTHONPATH, no
# cwd on sys.path), kagglecv made unimportable, and no src/ folder on the path either.
STANDALONE = """
import runpy, sys
sys.path = [p for p in sys.path if not p.rstrip('/').endswith('src')]
sys.modules['kagglecv'] = None
{block_cv2}
try:
    import kagglecv
    sys.exit('kagglecv is importable')
except ImportError:
    print('no kagglecv here')
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.fixture(scope="module")
def tta_chosen(tmp_path_factory, finished_run_built):
    """The session's finished run (2 folds x 1 epoch of test_resnet at 32 px) with the TTA choice for
    `_comp()` made once and cached in it: export_run reads it instead of predicting every OOF view."""
    return run_with_tta_chosen(tmp_path_factory, finished_run_built, _comp())


@pytest.fixture
def run(digits, tta_chosen):
    """A copy of that run in this test's working folder (prepared digits-demo, as `finished_run`)."""
    rel, run_dir = tta_chosen
    return shutil.copytree(run_dir, digits / rel)


def _comp(metric: str = "accuracy"):
    comp = load_competition("digits-demo")
    comp.hflip = True  # digits never flip; here TTA must travel into the export too
    comp.metric = metric  # log_loss: submit's temperature/clip must travel too
    return comp


def _standalone(script: Path, images: Path, out: Path, cv2: bool = True) -> str:
    code = STANDALONE.format(block_cv2="" if cv2 else "sys.modules['cv2'] = None")
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(script), str(images), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow  # ~7 s
def test_export_predicts_without_kagglecv_as_kagglecv_does(finished_run, digits, capsys, monkeypatch):
    run = finished_run  # no TTA choice cached: this test makes its own, with hflip
    from kagglecv.predict import tta

    # a run whose OOF chose hflip, so the flips inside the ONNX graph and the script are exercised
    monkeypatch.setattr(tta, "candidate_sets", lambda h, v: {"hflip": [(None, 1.0), ("hflip", 1.0)]})
    # and a temperature + clip as nested CV fits them on a log-loss OOF, so the export must carry both
    # and the standalone script apply them (whether this tiny run's OOF wants one moves with training)
    from kagglecv.predict import postprocess

    plan = {"kind": "temperature+clip", "T": 1.7, "eps": 1e-3, "nested_log_loss": {"none": 1.0}}
    monkeypatch.setattr(postprocess, "postprocess_for_run", lambda metric, run_dir, classes: dict(plan))
    comp = _comp("log_loss")
    out = export_run(comp, run)
    assert out == Path("exports") / f"digits-demo-{run.name}"
    assert sorted(p.name for p in out.iterdir()) == [
        "fold0.safetensors",
        "fold1.safetensors",
        "model.json",
        "model.onnx",
        "predict.py",
    ]
    spec = json.loads((out / "model.json").read_text())
    assert spec["model"] == "test_resnet" and spec["classes"] == [str(d) for d in range(10)]
    assert spec["img_size"] == 32 and spec["tta"] == ["hflip"] and spec["folds"] == [0, 1]
    assert spec["submission"]["id_column"] == "ImageId" and spec["submission"]["kind"] == "class_name"
    assert spec["onnx"]["max_abs_diff_vs_torch"] <= 1e-4
    assert spec["postprocess"] == {"kind": "temperature+clip", "T": 1.7, "eps": 1e-3}
    assert "max |Δprob|" in capsys.readouterr().out
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}  # shareable, not 0600

    images = digits / "few"
    images.mkdir()
    test = sorted((digits / "data" / "digits-demo" / "test").glob("*.png"))[:10]
    for p in test:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    said = _standalone(out / "predict.py", images, digits / "mine.csv")
    assert "no kagglecv here" in said and "1 unreadable" in said
    theirs = pd.read_csv(digits / "mine.csv")
    theirs.index = [Path(p).name for p in theirs["image"]]  # named as given, as kagglecv predict names them
    assert theirs.loc["broken.png", "error"] and pd.isna(theirs.loc["broken.png", "class"])
    ens = load_ensemble(comp, run)  # one load (its post-processing is fitted on OOF) for both checks
    ours, errors = predict_paths(ens, [images / p.name for p in test])
    assert not errors
    cols = [f"p_{c}" for c in range(10)]
    np.testing.assert_allclose(theirs.loc[[p.name for p in test], cols].to_numpy(), ours, atol=1e-5, rtol=0)

    import onnxruntime as ort

    # the ONNX graph: any batch size, the same probabilities (before the post-processing)
    ours = ens.predict_array(np.stack([squash(np.asarray(decode(p.read_bytes())[0]), 32) for p in test]))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.stack([squash(np.asarray(decode(p.read_bytes())[0]), 32) for p in test[:3]])
    got = session.run(None, {"pixels": pixels.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    np.testing.assert_allclose(got, ours[:3], atol=1e-4, rtol=0)
    one = session.run(None, {"pixels": pixels[:1].transpose(0, 3, 1, 2).astype(np.float32)})[0]
    np.testing.assert_allclose(one, ours[:1], atol=1e-4, rtol=0)


def _template():
    spec = importlib.util.spec_from_file_location("export_predict", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_standalone_decodes_like_kagglecv_and_resizes_close_without_opencv(tmp_path, monkeypatch):
    from helpers.images import odd_images

    (tmp_path / "data" / "digits-demo" / "test").mkdir(parents=True)
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((28, 28, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "data" / "digits-demo" / "test" / "1.png"
    )
    odd_images(tmp_path / "odd")
    ep = _template()
    for p in sorted((tmp_path / "odd").rglob("*.*")):
        try:
            want = np.asarray(decode(p.read_bytes())[0])
        except Exception:  # noqa: BLE001
            with pytest.raises((OSError, ValueError, SyntaxError)):
                ep.decode(p)
            continue
        np.testing.assert_array_equal(ep.decode(p), want, err_msg=p.name)
    assert ep.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.csv")]) == 2
    rng = np.random.default_rng(1)
    monkeypatch.setitem(sys.modules, "cv2", None)  # the NumPy resize that stands in for OpenCV
    for h, w, size in [(28, 28, 32), (100, 80, 32), (64, 64, 32), (20, 300, 32), (375, 500, 224)]:
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        monkeypatch.delitem(sys.modules, "cv2")
        want = squash(img, size)
        monkeypatch.setitem(sys.modules, "cv2", None)
        assert np.abs(ep.squash(img, size).astype(int) - want).max() <= 1, (h, w, size)


def test_existing_export_needs_force_and_survives_a_failed_one(run, digits, monkeypatch):
    comp = _comp()
    monkeypatch.setattr(export_mod, "write_onnx", lambda ens, path: path.write_bytes(b"onnx"))
    monkeypatch.setattr(export_mod, "onnx_parity", lambda ens, path, images: 0.0)
    out = export_run(comp, run)
    first = {**json.loads((out / "model.json").read_text()), "marker": "the first export"}
    (out / "model.json").write_text(json.dumps(first))
    with pytest.raises(UserError, match="exists already: FORCE=1") as e:
        export_run(comp, run)
    assert "\n" not in str(e.value)

    monkeypatch.setattr(export_mod, "onnx_parity", lambda ens, path, images: 3e-3)
    with pytest.raises(UserError, match=r"max \|Δprob\| 3.00e-03 > 1e-04"):
        export_run(comp, run, force=True)
    assert json.loads((out / "model.json").read_text()) == first  # the old export is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary folder left

    monkeypatch.setattr(export_mod, "onnx_parity", lambda ens, path, images: 0.0)
    export_run(comp, run, force=True)
    assert json.loads((out / "model.json").read_text())["run"] == run.name
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_failed_parity_leaves_no_folder(run, digits, monkeypatch):
    monkeypatch.setattr(export_mod, "write_onnx", lambda ens, path: path.write_bytes(b"onnx"))
    monkeypatch.setattr(export_mod, "onnx_parity", lambda ens, path, images: 1.0)
    (digits / "exp").mkdir()
    killed = digits / "exp" / f".x.{2**22 + 1}.tmp"  # a half-export whose process was killed
    killed.mkdir()
    with pytest.raises(UserError, match="nothing was exported"):
        export_run(_comp(), run, out_dir=digits / "exp" / "x")
    assert list((digits / "exp").iterdir()) == []


@pytest.mark.parametrize("stop", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_full_disk_or_ctrl_c_leaves_no_folder(run, digits, monkeypatch, stop):
    def write_onnx(ens, path):
        raise stop

    monkeypatch.setattr(export_mod, "write_onnx", write_onnx)
    with pytest.raises(type(stop)):
        export_run(_comp(), run)
    assert list((digits / "exports").iterdir()) == []


def test_export_needs_real_images_and_a_finished_run(finished_run, digits, monkeypatch):
    run = finished_run  # no TTA choice cached: the TTA choice too finds the images gone
    monkeypatch.setattr(export_mod, "write_onnx", lambda ens, path: path.write_bytes(b"onnx"))
    shutil.rmtree(digits / "data" / "digits-demo")
    with pytest.raises(UserError, match="needs 8 readable images .* `make data COMP=digits-demo`"):
        export_run(_comp(), run)
    assert list((digits / "exports").iterdir()) == []
    (run / "summary.json").unlink()
    with pytest.raises(UserError, match="did not finish"):
        export_run(_comp(), run)


def test_missing_onnx_is_one_line(workdir, tta_chosen, monkeypatch):
    run = shutil.copytree(tta_chosen[1], workdir / tta_chosen[0])  # checked before anything is read
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"needs onnxruntime: pip install -e '.\[export\]'"):
        export_run(_comp(), run)


def test_model_onnx_cannot_express_is_one_line(run, digits, monkeypatch):
    def refuse(net, example, path):
        raise RuntimeError(
            "Exporting the operator 'aten::fancy' to ONNX opset version 17 is not supported.\nmore"
        )

    monkeypatch.setattr(export_mod, "_onnx_export", refuse)
    with pytest.raises(
        UserError, match="test_resnet does not export to ONNX .*aten::fancy.*nothing was exported"
    ):
        export_run(_comp(), run)
    assert list((digits / "exports").iterdir()) == []


@pytest.mark.parametrize(
    "target", ["notes folder", "file", "run folder", "project", "link", "export + notes"]
)
def test_force_replaces_only_a_folder_export_wrote(run, digits, monkeypatch, capsys, target):
    """`export -o <path> --force` deleted whatever it was given: a folder of notes, a file (it became
    a folder), a run folder (checkpoints and OOF gone), the project root (data/, runs/ gone)."""
    from helpers.cli import cli_text
    from kagglecv.cli import main

    monkeypatch.setattr(export_mod, "write_onnx", lambda ens, path: path.write_bytes(b"onnx"))
    monkeypatch.setattr(export_mod, "onnx_parity", lambda ens, path, images: 0.0)
    notes = digits / "notes"
    notes.mkdir()
    (notes / "ideas.md").write_text("mine")
    export = digits / "exports" / "e"
    if target in ("link", "export + notes"):  # a real export, to link to or to add the user's notes to
        export_run(_comp(), run, out_dir=export)
    out = {
        "notes folder": notes,
        "file": notes / "ideas.md",
        "run folder": run,
        "project": Path("."),
        "link": digits / "link",
        "export + notes": export,
    }[target]
    if target == "link":
        out.symlink_to(export)
    if target == "export + notes":
        (export / "my-notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in digits.rglob("*") if p.is_file() and not p.is_symlink()}
    assert main(["export", "--comp", "digits-demo", "--run", run.name, "-o", str(out), "--force"]) == 2
    said = cli_text(capsys).split("error:")[-1].replace(str(digits), "<project>")
    refused = "is this folder or holds it" if target == "project" else "is not an export"
    assert refused in said and "force" not in said.lower(), said
    after = {p: p.read_bytes() for p in digits.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before and (target != "link" or out.is_symlink())
    assert main(["export", "--comp", "digits-demo", "--run", run.name, "-o", str(out)]) == 2  # nor without
    assert "FORCE=1" not in cli_text(capsys)


def test_export_to_the_project_folder_is_one_line(run, digits, capsys):
    from helpers.cli import cli_text
    from kagglecv.cli import main

    assert main(["export", "--comp", "digits-demo", "--run", run.name, "-o", "."]) == 2
    assert "--out . is this folder or holds it" in cli_text(capsys)
