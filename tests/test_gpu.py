"""CUDA paths (bf16/fp16 autocast, channels_last, pinned memory): run only where a GPU is visible."""

import json

import pytest
import torch

from helpers.runs import interrupted_at_validation
from kagglecv.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ON_GPU = ["--comp", "digits-demo", "--config", "configs/smoke.yaml", "device=cuda"]


def test_smoke_training_and_submit_on_the_gpu(digits):
    assert main(["train", *ON_GPU, "ema=true", "accum_steps=2"]) == 0
    (run,) = (digits / "runs" / "digits-demo").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "cuda"
    assert main(["submit", "--comp", "digits-demo"]) == 0
    assert "test_score" in json.loads((digits / "submissions" / f"digits-demo-{run.name}.json").read_text())


def test_autocast_dtype_matches_the_card():
    from kagglecv.ml.engine import amp_dtype, autocast, make_scaler

    cuda = torch.device("cuda")
    dtype = amp_dtype(cuda, True)
    with autocast(cuda, dtype):
        y = torch.nn.Linear(8, 8).cuda()(torch.randn(4, 8, device="cuda"))
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert y.dtype == dtype == expected
    assert make_scaler(cuda, dtype).is_enabled() == (expected == torch.float16)


def test_fp16_with_loss_scaling_on_the_gpu(digits):
    assert main(["train", *ON_GPU, "amp_dtype=fp16", "epochs=3", "compile=true"]) == 0
    (run,) = (digits / "runs" / "digits-demo").iterdir()
    assert json.loads((run / "summary.json").read_text())["cv_mean"] > 0.2


def test_resume_on_the_gpu_finishes_the_run(digits, monkeypatch):
    """Interrupted and resumed on the card (CUDA RNG streams, scaler and EMA state restored). GPU kernels
    need not be deterministic, so this checks the run completes and learns; the CPU test checks bits."""
    import kagglecv.train.run as train_mod
    from kagglecv.core.competition import load_competition
    from kagglecv.core.config import load_config

    cfg = load_config(
        "configs/smoke.yaml", ["device=cuda", "train_folds=1", "epochs=3", "ema=true", "lr=0.003"]
    )
    with interrupted_at_validation(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        train_mod.train(load_competition("digits-demo"), cfg)
    assert main(["train", "--resume", "--comp", "digits-demo"]) == 0
    (run,) = (digits / "runs" / "digits-demo").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["cv_mean"] > 0.2
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3
