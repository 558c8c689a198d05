"""make kernel: the notebook's dry run equals `make submit`, the push and the code submission go
through the real kaggle client to the fake Kaggle, and every failure is one clear message."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from helpers.cli import cli_text
from helpers.kaggle_fake import competition_zip
from helpers.kaggle_fake_kernels import dumps_log
from helpers.runs import FINISHED_RUN_ARGS
from kagglecv.cli import main
from kagglecv.compete.upload import read_log
from kagglecv.core.competition import load_competition, parse_competition
from kagglecv.core.config import load_config, read_yaml
from kagglecv.core.errors import UserError
from kagglecv.prepare.layout import prepare
from kagglecv.ship import kernel as kernel_mod
from kagglecv.ship import kernel_folder, kernel_push
from kagglecv.train.run import train

USER = "kaggle-user"  # the fake's account


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(kernel_push, "POLL_SECONDS", 0.0)


def as_kaggle(monkeypatch, comp):
    """digits-demo as if Kaggle held it (as digit-recognizer): pushing needs a Kaggle competition."""
    monkeypatch.setattr(comp, "source", {"kind": "kaggle", "competition": "digit-recognizer"})
    return comp


@pytest.mark.slow
def test_aerial_cactus_dry_run_push_and_code_submission(fake, workdir, quick, capsys):
    """The shipped code competition, through the CLI: data -> train -> make kernel PUSH=1 -> make
    submit KERNEL=1, the notebook's file equal to make submit's."""
    comp = load_competition("aerial-cactus-identification")
    prepare(comp)
    # a fixed LR: the LR range test is no part of what make kernel builds, runs or pushes
    run_dir = train(comp, load_config("configs/smoke.yaml", [*FINISHED_RUN_ARGS, "lr=0.003"]))
    out = kernel_folder.kernel_dir(comp, run_dir)
    ours = out / "dryrun" / "working" / "submission.csv"
    # Kaggle's run writes what the dry run wrote (read when Kaggle serves the output)
    fake.kernel_runs["*"] = {"files": {"submission.csv": ours}, "log": dumps_log(["ok"])}
    capsys.readouterr()
    assert main(["kernel", "-c", comp.slug, "-r", run_dir.name, "--push"]) == 0
    text = cli_text(capsys)
    assert f"the notebook's submission.csv equals submissions/{comp.slug}-{run_dir.name}.csv" in text
    assert "values within" in text and "of the 540 min Kaggle allows" in text and "ms/image" in text
    meta = json.loads((out / "notebook" / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["enable_gpu"] is False  # the smoke recipe: cpu
    assert meta["competition_sources"] == [comp.slug] and meta["kernel_type"] == "script"
    names = sorted(p.name for p in (out / "dataset").iterdir())
    assert "model.json" in names and "kernel.json" in names and "model.onnx" not in names
    assert any(n.startswith("kagglecv-") and n.endswith(".whl") for n in names)

    ds_ref, kernel_ref = meta["dataset_sources"][0], meta["id"]
    assert ds_ref.startswith(f"{USER}/") and kernel_ref.startswith(f"{USER}/")
    assert set(fake.datasets[ds_ref]["versions"][0]) == set(names) - {"dataset-metadata.json"}
    pushed = fake.kernels[kernel_ref]["versions"][-1]
    assert pushed["datasetDataSources"] == [ds_ref] and pushed["enableInternet"] is False
    push = json.loads((out / "push.json").read_text())
    assert push["status"] == "complete" and push["version"] == 1
    assert (out / "output" / "submission.csv").read_bytes() == ours.read_bytes()
    assert "submit it: make submit KERNEL=1" in text and "Kaggle's submission.csv equals" in text

    # a second push is a new dataset version and a new notebook version (no new dry run here)
    record = {
        "run": run_dir.name,
        "cv_mean": push["cv_mean"],
        "file": f"submissions/{comp.slug}-{run_dir.name}.csv",
    }
    kernel_push.push_kernel(comp, out, record)
    assert len(fake.datasets[ds_ref]["versions"]) == 2 and len(fake.kernels[kernel_ref]["versions"]) == 2

    assert main(["submit", "-c", comp.slug, "--kernel", "-r", run_dir.name, "-m", "notebook"]) == 0
    assert "submitted" in cli_text(capsys)
    sent = fake.code_submissions[-1]
    assert (sent["kernel"], sent["version"], sent["data"]) == (kernel_ref, 2, ours.read_bytes())
    assert read_log()[-1]["status"] == "done" and "notebook" in read_log()[-1]["message"]


def test_the_notebook_lays_out_pixel_rows_as_make_data_does(digits, monkeypatch, tmp_path):
    from kagglecv.ship import notebook

    comp = load_competition("digits-demo")
    raw = (comp.data_dir / "raw").resolve()
    want = sorted(p.name for p in (comp.data_dir / "test").iterdir())
    (tmp_path / "nb").mkdir()
    monkeypatch.chdir(tmp_path / "nb")  # as the notebook does: its own scratch folder
    notebook.lay_out_test(comp, notebook.raw_view(comp, raw, tmp_path / "nb" / "raw"))
    assert sorted(p.name for p in (comp.data_dir / "test").iterdir()) == want
    first = want[0]
    assert (comp.data_dir / "test" / first).read_bytes() == (
        digits / "data/digits-demo/test" / first
    ).read_bytes()


def test_a_failing_dry_run_shows_its_traceback_and_pushes_nothing(finished_run, fake, monkeypatch, capsys):
    comp = as_kaggle(monkeypatch, load_competition("digits-demo"))
    out = kernel_folder.kernel_dir(comp, finished_run)
    (out / "notebook").mkdir(parents=True)
    (out / "dataset").mkdir()
    (out / "dataset" / "dataset-metadata.json").write_text(json.dumps({"id": f"{USER}/kagglecv-x"}))
    (out / "notebook" / kernel_folder.NOTEBOOK_FILE).write_text(
        "def f():\n    raise RuntimeError('boom in the notebook')\nf()\n"
    )
    with pytest.raises(UserError, match="failed its dry run") as e:
        kernel_mod.make_kernel(comp, finished_run.name, push=True)
    assert "RuntimeError: boom in the notebook" in str(e.value) and "nothing was pushed" in str(e.value)
    assert "using kernels/digits-demo-" in cli_text(capsys)  # an existing folder is kept, not rebuilt
    assert not fake.datasets and not fake.kernels


def test_a_run_without_a_finished_fold_is_refused(finished_run, capsys):
    for p in finished_run.glob("fold*.pt"):
        p.unlink()
    assert main(["kernel", "-c", "digits-demo", "-r", finished_run.name]) == 2
    assert "has no finished fold" in cli_text(capsys)
    assert not kernel_folder.KERNELS_DIR.exists()


def test_pushing_needs_a_kaggle_competition(finished_run):
    with pytest.raises(UserError, match="not a Kaggle competition"):
        kernel_mod.make_kernel(load_competition("digits-demo"), finished_run.name, push=True)


# --- the push alone, on a small hand-made folder (no model needed) -----------------------------------


def small_folder(root: Path, run: str = "r1") -> Path:
    out = root / "kernels" / f"digits-demo-{run}"
    (out / "dataset").mkdir(parents=True)
    (out / "notebook").mkdir()
    (out / "dataset" / "weights.bin").write_bytes(b"\0" * 100)
    (out / "dataset" / "dataset-metadata.json").write_text(
        json.dumps(
            {"title": "kagglecv-digits", "id": "someone/kagglecv-digits", "licenses": [{"name": "CC0-1.0"}]}
        )
    )
    (out / "notebook" / "nb.py").write_text("print('hi')\n")
    meta = {
        "id": "someone/kagglecv-digits-nb",
        "title": "kagglecv-digits-nb",
        "code_file": "nb.py",
        "language": "python",
        "kernel_type": "script",
        "enable_internet": False,
        "dataset_sources": ["someone/kagglecv-digits"],
        "competition_sources": ["digit-recognizer"],
    }
    (out / "notebook" / "kernel-metadata.json").write_text(json.dumps(meta))
    return out


RECORD = {"run": "r1", "cv_mean": 0.5, "file": "submissions/none.csv"}


@pytest.mark.parametrize(
    "service, code, said",
    [
        ("datasets", 401, "rejected your credentials"),
        ("datasets", 403, "must belong to the account of your token"),
        ("blobs", 403, "must belong to the account of your token"),
        ("kernels", 403, "must belong to the account of your token"),
        ("kernels", 404, "Kaggle has no notebook"),
        ("kernels/GetKernelSessionStatus", 403, "must belong to the account of your token"),
    ],
)
def test_refusals_of_the_datasets_and_kernels_endpoints(
    fake, workdir, quick, monkeypatch, service, code, said
):
    comp = as_kaggle(monkeypatch, load_competition("digits-demo"))
    out = small_folder(workdir)
    if service.startswith("kernels"):  # the dataset is there: the notebook's own endpoint refuses
        kernel_push.set_owner(out, USER)
        kernel_push.push_dataset(kernel_push.connect(), out / "dataset", f"{USER}/kagglecv-digits", "r1")
    fake.service_status[service] = code
    with pytest.raises(UserError, match=said):
        kernel_push.push_kernel(comp, out, RECORD)
    assert not (out / kernel_push.PUSH_RECORD).exists()


@pytest.mark.parametrize(
    "run, kind, said",
    [
        ({"statuses": ["RUNNING", "ERROR"], "failure": "Your notebook hit an exception",
          "log": dumps_log(["Traceback (most recent call last):", "ValueError: bad pixels"])},
         "error", "ValueError: bad pixels"),
        ({"statuses": ["RUNNING", "ERROR"], "failure": "Notebook exceeded its maximum run time"},
         "timeout", "ran out of time"),
        ({"statuses": ["COMPLETE"], "files": {"other.csv": b"x"}}, "no-submission", "wrote no submission.csv"),
        ({"statuses": ["CANCEL_ACKNOWLEDGED"]}, "cancelled", "cancelled"),
    ],
)  # fmt: skip
def test_how_a_kaggle_run_ended_is_said_and_recorded(fake, workdir, quick, monkeypatch, run, kind, said):
    comp = as_kaggle(monkeypatch, load_competition("digits-demo"))
    out = small_folder(workdir)
    fake.kernel_runs["*"] = run
    with pytest.raises(UserError, match=said):
        kernel_push.push_kernel(comp, out, RECORD)
    push = json.loads((out / kernel_push.PUSH_RECORD).read_text())
    assert push["status"] == kind and push["dataset"] == f"{USER}/kagglecv-digits"
    monkeypatch.setattr(kernel_mod, "kernel_dir", lambda c, r: out)
    monkeypatch.setattr("kagglecv.core.runs.find_run", lambda slug, run, **_: Path("runs/digits-demo/r1"))
    with pytest.raises(UserError, match=f"ended {kind}, without a submission"):
        kernel_push.submit_kernel(comp, "r1")
    assert not fake.code_submissions


def test_a_polling_limit_is_a_timeout(fake, workdir, quick, monkeypatch):
    comp = as_kaggle(monkeypatch, load_competition("digits-demo"))
    fake.kernel_runs["*"] = {"statuses": ["RUNNING"]}
    monkeypatch.setattr(kernel_push, "QUEUE_S", -comp.submission.notebook_minutes * 60)
    with pytest.raises(UserError, match="ran out of time"):
        kernel_push.push_kernel(comp, small_folder(workdir), RECORD)


def test_submit_kernel_needs_a_push(finished_run, capsys, monkeypatch):
    comp = as_kaggle(monkeypatch, load_competition("digits-demo"))
    monkeypatch.setattr("kagglecv.cli.commands._comp", lambda slug: comp)
    assert main(["submit", "--kernel", "-r", finished_run.name]) == 2
    text = cli_text(capsys)
    assert "has no pushed notebook" in text and f"make kernel PUSH=1 RUN={finished_run.name}" in text


# --- the notebook's pieces, and the competition keys -------------------------------------------------


def test_the_notebook_unpacks_only_the_test_archives(workdir, monkeypatch):
    from kagglecv.ship import notebook

    comp = load_competition("aerial-cactus-identification")
    source = workdir / "input" / "aerial-cactus-identification"
    source.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(competition_zip(comp.slug))) as z:
        z.extractall(source)  # as Kaggle mounts it: train.zip, test.zip, the CSVs
    assert notebook.find_competition_input(workdir / "input", comp.slug, "sample_submission.csv") == source
    monkeypatch.chdir(workdir / "input")
    raw = notebook.raw_view(comp, source, workdir / "scratch" / "raw")
    assert (raw / "test").is_dir() and not (raw / "train").exists()  # train.zip left packed
    notebook.lay_out_test(comp, raw)
    sample = pd.read_csv(comp.data_dir / "sample_submission.csv")
    assert sorted(p.name for p in (comp.data_dir / "test").iterdir()) == sorted(sample["id"])


def test_the_notebook_reads_cassavas_folders_as_mounted(workdir, monkeypatch):
    """cassava, mounted unpacked (train_images/, test_images/, the TFRecords, the label map): nothing
    to unpack, and test/ gets exactly the sample's images, ids with their .jpg."""
    from kagglecv.ship import notebook

    comp = load_competition("cassava-leaf-disease-classification")
    assert comp.submission.code_competition and not comp.submission.upload
    source = workdir / "input" / comp.slug
    with zipfile.ZipFile(io.BytesIO(competition_zip(comp.slug))) as z:
        z.extractall(source)
    monkeypatch.chdir(workdir / "input")
    assert notebook.raw_view(comp, source, workdir / "scratch" / "raw") == source  # read in place
    notebook.lay_out_test(comp, source)
    sample = pd.read_csv(comp.data_dir / "sample_submission.csv")
    assert sorted(p.name for p in (comp.data_dir / "test").iterdir()) == sorted(sample["image_id"])


def test_competition_keys(tmp_path):
    comp = load_competition("aerial-cactus-identification", Path(__file__).parents[1] / "competitions")
    assert comp.submission.code_competition and comp.submission.notebook_minutes == 540
    data = read_yaml(Path(__file__).parents[1] / "competitions" / "digits-demo.yaml", "x")
    assert parse_competition(data, Path("digits-demo.yaml")).submission.code_competition is False
    data["submission"]["notebook_minutes"] = 0
    with pytest.raises(UserError, match="notebook_minutes must be a positive"):
        parse_competition(data, Path("digits-demo.yaml"))
    data["submission"]["notebook_minute"] = 5
    with pytest.raises(UserError, match="notebook_minutes"):
        parse_competition(data, Path("digits-demo.yaml"))


def test_compare_submissions(tmp_path):
    comp = load_competition("aerial-cactus-identification", Path(__file__).parents[1] / "competitions")
    want = tmp_path / "want.csv"
    pd.DataFrame({"id": ["a.jpg", "b.jpg"], "has_cactus": [0.25, 0.75]}).to_csv(want, index=False)
    got = tmp_path / "got.csv"
    pd.DataFrame({"id": ["a.jpg", "b.jpg"], "has_cactus": [0.250000001, 0.75]}).to_csv(got, index=False)
    assert kernel_folder.compare_submissions(got, want, comp) < 1e-8
    pd.DataFrame({"id": ["b.jpg", "a.jpg"], "has_cactus": [0.25, 0.75]}).to_csv(got, index=False)
    with pytest.raises(UserError, match="other ids at row 2"):
        kernel_folder.compare_submissions(got, want, comp)
    pd.DataFrame({"id": ["a.jpg", "b.jpg"], "has_cactus": [0.3, 0.75]}).to_csv(got, index=False)
    with pytest.raises(UserError, match="differ by up to 5.00e-02"):
        kernel_folder.compare_submissions(got, want, comp)


def test_slugs_fit_kaggle():
    long = kernel_folder.short_slug("kagglecv histopathologic-cancer-detection 20261201-145808-convnext_tiny")
    assert 6 <= len(long) <= 50 and long == long.lower() and "_" not in long
    assert kernel_folder.short_slug("x") == "x00000"
