"""Issue 5 on the CPU: local pretrained weights, fine_tune phases with EMA / accumulation / mixup,
exact resume after an interruption, folds trained apart and gathered, the disk image cache."""

import contextlib
import json
import shutil

import pytest
import timm
import torch

import kagglecv.train.one_fold as fold_mod
from helpers.cli import cli_text
from helpers.repo import REPO
from helpers.runs import FINISHED_RUN_ARGS, interrupted_at_validation
from kagglecv.cli import main
from kagglecv.core.checkpoint import load_checkpoint
from kagglecv.core.competition import load_competition
from kagglecv.core.config import load_config
from kagglecv.core.errors import UserError
from kagglecv.core.runs import RUNS_DIR, gather
from kagglecv.ml.engine import Stepper, train_one_epoch
from kagglecv.ml.model import create_model
from kagglecv.train.run import train
from kagglecv.train.train_data import TrainData

RECIPE = [
    "device=cpu",  # bit-identical resume needs deterministic kernels; the GPU's may not be
    "train_folds=1",
    "lr=0.003",
    "freeze_epochs=1",
    "epochs=2",
    "ema=true",
    "ema_decay=0.9",
    "accum_steps=2",
    "mixup=0.2",
    "layer_decay=0.8",
    "img_size=16",  # how it resumes, not how well it learns: a quarter of 32 px's work
]


def test_pretrained_file_loads_local_weights(tmp_path):
    src = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    model = create_model("test_resnet", num_classes=7, pretrained_file=str(path))
    assert torch.equal(model.state_dict()["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    assert model.get_classifier().out_features == 7  # a fresh head for our classes


def test_pretrained_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import, so patch it
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError, match=r"pretrained_file=.*pretrained=false") as e:
        create_model("test_resnet", num_classes=2, pretrained=True)
    assert "HF_HUB_OFFLINE=1" in str(e.value)
    with pytest.raises(UserError, match="pretrained_file .*missing.pth not found"):
        create_model("test_resnet", num_classes=2, pretrained_file=str(tmp_path / "missing.pth"))


def _without_report(monkeypatch):
    """`kagglecv train` writes no report.html after training: seconds of figures a test may not need."""
    monkeypatch.setattr("kagglecv.report.page.write_report", lambda *args, **kwargs: None)


def _without_saved_schedule(last_pt):
    """fold<k>.last.pt as kagglecv wrote it before schedules were saved (they were replayed)."""
    state = torch.load(last_pt, weights_only=True)
    del state["scheduler"]
    torch.save(state, last_pt)


def test_resume_after_interruption_gives_the_same_result(digits_small, monkeypatch):
    """Interrupted mid-phase, at the head/body boundary, and mid-phase from an older resume file:
    each resumed run ends bit-identical to the uninterrupted one (on digits-small: four trainings)."""
    comp = load_competition("digits-small")
    cfg = load_config("configs/smoke.yaml", RECIPE)
    straight = train(comp, cfg)
    a, meta_a = load_checkpoint(straight / "fold0.pt")

    _without_report(monkeypatch)  # (the DDP launch below writes one after a resume)
    for at, old_file in ((3, False), (2, False), (3, True)):
        with interrupted_at_validation(monkeypatch, at), pytest.raises(KeyboardInterrupt):
            train(comp, cfg)
        (interrupted,) = [p for p in straight.parent.iterdir() if not (p / "summary.json").exists()]
        assert (interrupted / "fold0.last.pt").exists()
        assert not (interrupted / "fold0.pt").exists()
        if old_file:
            _without_saved_schedule(interrupted / "fold0.last.pt")

        assert main(["train", "--resume", "--comp", "digits-small"]) == 0
        b, meta_b = load_checkpoint(interrupted / "fold0.pt")
        assert meta_a.best_epoch == meta_b.best_epoch and meta_a.score == meta_b.score, at
        for k in a:
            assert torch.equal(a[k], b[k]), (at, old_file, k)
        assert not (interrupted / "fold0.last.pt").exists()
        rows = (interrupted / "metrics.csv").read_text().splitlines()
        assert rows == (straight / "metrics.csv").read_text().splitlines() and len(rows) == 1 + 3


def test_fp16_loss_scaling_with_accumulation():
    """fp16 autocast runs on the CPU too, so the GradScaler path a pre-bf16 GPU takes is exercised here."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (16 * 8,), generator=g)
    x = (torch.rand(len(y), 3, 4, 4, generator=g) * 80 + 60 + y.view(-1, 1, 1, 1) * 40).to(torch.uint8)
    batches = list(
        zip(x.split(8), y.split(8), strict=True)
    )  # 16 batches: 5 full accumulations of 3, then 1 partial
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stepper = Stepper(
        model,
        optimizer=opt,
        device=torch.device("cpu"),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        amp_dtype_name="fp16",
        accum=3,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    assert stepper.dtype == torch.float16 and stepper.scaler.is_enabled()

    first = train_one_epoch(stepper, batches, sched)["train_loss"]
    assert opt.state_dict()["state"][0]["step"].item() == 6 and stepper._micro == 0
    assert stepper.scaler.get_scale() > 1  # the loss really was scaled, and no step overflowed to zero
    assert train_one_epoch(stepper, batches, sched)["train_loss"] < first


def _as_if_trained_on_this_machine_only(run, folds: list[int]):
    """The finished run as the machine that trained only `folds` left it; the other folds' files are
    returned (as another machine would have them), to be copied in."""
    away = {}
    for k in {0, 1} - set(folds):
        for name in (f"fold{k}.pt", f"oof_fold{k}.csv"):
            away[name] = (run / name).read_bytes()
            (run / name).unlink()
    (run / "plan.json").write_text(json.dumps({"fold_ids": folds}))
    gather(run, load_competition("digits-demo"))
    return away


def test_folds_split_across_machines_are_gathered_by_train_resume(finished_run, capsys, monkeypatch):
    """FOLDS=0 here, FOLDS=1 on another machine, its files copied in: RESUME gathers them without
    training anything (train owns the run folder), then submit predicts with both folds."""
    run = finished_run
    _without_report(monkeypatch)
    copied = _as_if_trained_on_this_machine_only(run, [0])
    assert json.loads((run / "summary.json").read_text())["fold_ids"] == [0]
    for name, data in copied.items():
        (run / name).write_bytes(data)
    metrics = (run / "metrics.csv").read_text()
    capsys.readouterr()
    assert main(["train", "--comp", "digits-demo", "--run", run.name, "--resume"]) == 0
    out = cli_text(capsys)
    assert f"every fold of run {run.name} is finished (0,1): nothing to train" in out
    assert "lr range test" not in out and (run / "metrics.csv").read_text() == metrics
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fold_ids"] == [0, 1] and len(summary["fold_scores"]) == 2
    assert main(["submit", "--comp", "digits-demo", "--run", run.name]) == 0


def test_a_run_saved_before_a_new_config_key_still_continues(finished_run, monkeypatch):
    """config.yaml of an older run lacks keys added since (amp_dtype) and names train_folds `folds`:
    FOLDS=1 of it still trains, with the missing keys at their defaults."""
    run = finished_run
    _without_report(monkeypatch)
    _as_if_trained_on_this_machine_only(run, [0])
    cfg_path = run / "config.yaml"
    lines = [line for line in cfg_path.read_text().splitlines(True) if "amp_dtype" not in line]
    cfg_path.write_text("".join(line.replace("train_folds:", "folds:") for line in lines))
    common = [
        "--comp",
        "digits-demo",
        "--config",
        "configs/smoke.yaml",
        "--run",
        run.name,
        *FINISHED_RUN_ARGS,
    ]
    assert main(["train", *common, "--folds", "1"]) == 0
    assert json.loads((run / "summary.json").read_text())["fold_ids"] == [0, 1]


def test_disk_cache_is_built_once(digits_small):
    comp = load_competition("digits-small")
    cfg = load_config("configs/smoke.yaml", ["cache=disk"])
    data = TrainData(comp, cfg, 32)
    cached = sorted((digits_small / "data" / "digits-small" / "cache" / "32").rglob("*.jpg"))
    assert len(cached) == 200 and data.dataset.images is None  # every training image
    stamp = cached[0].stat().st_mtime_ns
    img, _ = data.dataset[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    TrainData(comp, cfg, 32)
    assert cached[0].stat().st_mtime_ns == stamp


def test_unreachable_hub_fails_fast_and_a_bad_weights_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UserError, match="is unreachable, so only the local cache was tried"):
        create_model("test_resnet", num_classes=2, pretrained=True)
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored for whatever runs next
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02this is not a checkpoint" * 100)
    with pytest.raises(UserError, match="junk.pth is not a weights file"):
        create_model("test_resnet", num_classes=2, pretrained_file=str(junk))


# ---- data-parallel training: one torchrun launch (2 CPU processes, gloo) for the two DDP tests ----

# a freeze phase of 2 epochs, then 2 of everything, accumulating 2 batches per step: stopped after epoch 0,
# the torchrun ranks resume inside the head phase, then unfreeze and train the whole model (the DDP
# wrapper built anew for each phase)
DDP_RECIPE = [
    "train_folds=1",
    "lr=0.003",
    "freeze_epochs=2",
    "epochs=2",
    "accum_steps=2",
    "img_size=16",  # digits are 8x8 scans: 16 px loses nothing and costs a quarter of 32 px
    "device=cpu",  # CPU processes with gloo, also where a GPU is visible
]


@contextlib.contextmanager
def _interrupted_after_first_epoch(monkeypatch):
    """Ctrl-C as soon as fold<k>.last.pt of the first epoch is saved (no epoch trained in vain)."""
    real = fold_mod.save_resume_state

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fold_mod, "save_resume_state", save_then_stop)
    try:
        yield
    finally:
        monkeypatch.setattr(fold_mod, "save_resume_state", real)


@pytest.fixture(scope="module")
def ddp_launch(tmp_path_factory, digits_prepared):
    """The run `ddp` on digits-demo, stopped by a Ctrl-C after its first epoch (a head-only one) in this
    process, then continued by `make train RESUME=1 GPUS=2` without RUN, device=cpu: one torchrun launch
    that both DDP tests look at. Returns (runs/digits-demo/, the run folders there before the launch,
    the launch's exit code, metrics.csv's row of epoch 0)."""
    root = tmp_path_factory.mktemp("ddp")
    for name in ("competitions", "configs"):
        shutil.copytree(REPO / name, root / name)
    shutil.copytree(digits_prepared, root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("KAGGLECV_NO_PROGRESS", "1")
        mp.setenv("TORCHRUN", "--standalone")  # a free port: tests run side by side (xdist)
        comp = load_competition("digits-demo")
        cfg = load_config("configs/smoke.yaml", DDP_RECIPE)
        with _interrupted_after_first_epoch(mp), pytest.raises(KeyboardInterrupt):
            train(comp, cfg, run_dir=RUNS_DIR / "digits-demo" / "ddp")
        runs = root / "runs" / "digits-demo"
        before = [p.name for p in runs.iterdir()]
        assert torch.load(runs / "ddp" / "fold0.last.pt", weights_only=True)["epoch"] == 0
        (epoch0,) = (runs / "ddp" / "metrics.csv").read_text().splitlines()[1:]
        rc = main(["train", "--resume", "--gpus", "2", "--comp", "digits-demo", "device=cpu"])
    return runs, before, rc, epoch0


@pytest.mark.slow
def test_ddp_resumes_the_latest_unfinished_run(ddp_launch):
    """make train RESUME=1 GPUS=2 without RUN: every rank continues the same, latest unfinished run."""
    runs, before, rc, epoch0 = ddp_launch
    assert rc == 0 and before == ["ddp"]
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    run = runs / "ddp"
    assert json.loads((run / "summary.json").read_text())["fold_ids"] == [0]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[1] == epoch0  # continued after epoch 0, not started over


@pytest.mark.slow
def test_ddp_with_gloo_on_two_cpu_processes(ddp_launch):
    """make train GPUS=2 on a machine without CUDA: torchrun, 2 CPU processes, gloo; the ranks train
    the rest of the head phase, then unfreeze the body, accumulating gradients over 2 batches."""
    runs, _, rc, _ = ddp_launch
    assert rc == 0
    run = runs / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fold_ids"] == [0] and summary["cv_mean"] > 0.2  # it learned, with half the data per rank
    _, meta = load_checkpoint(run / "fold0.pt")
    assert meta.best_epoch >= 1  # its best weights are the ranks' (epoch 0 trained before torchrun)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # rank 0 alone wrote metrics: one row per epoch, not per rank
    assert not list(run.glob("*.last.pt"))
