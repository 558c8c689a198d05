"""CUDA paths (bf16/fp16 autocast, channels_last, pinned memory): run only where a GPU is visible."""

import json

import pytest
import torch

from kagglecv.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_smoke_training_and_submit_on_the_gpu(digits):
    args = [
        "--comp",
        "digits-demo",
        "--config",
        "configs/smoke.yaml",
        "device=cuda",
        "ema=true",
        "accum_steps=2",
    ]
    assert main(["train", *args]) == 0
    (run,) = (digits / "runs" / "digits-demo").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "cuda"
    assert main(["submit", "--comp", "digits-demo"]) == 0
    assert "test_score" in json.loads((run / "summary.json").read_text())


def test_autocast_dtype_matches_the_card():
    from kagglecv.engine import amp_dtype, autocast, make_scaler

    cuda = torch.device("cuda")
    dtype = amp_dtype(cuda, True)
    with autocast(cuda, dtype):
        y = torch.nn.Linear(8, 8).cuda()(torch.randn(4, 8, device="cuda"))
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert y.dtype == dtype == expected
    assert make_scaler(cuda, dtype).is_enabled() == (expected == torch.float16)


def test_fp16_with_loss_scaling_on_the_gpu(digits):
    args = [
        "--comp",
        "digits-demo",
        "--config",
        "configs/smoke.yaml",
        "device=cuda",
        "amp_dtype=fp16",
        "epochs=3",
    ]
    assert main(["train", *args, "compile=true"]) == 0
    (run,) = (digits / "runs" / "digits-demo").iterdir()
    assert json.loads((run / "summary.json").read_text())["cv_mean"] > 0.2
