import json
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers.runs import FINISHED_RUN_ARGS
from kagglecv.core.checkpoint import load_checkpoint
from kagglecv.core.config import load_config
from kagglecv.ml.engine import Stepper
from kagglecv.train.lr_find import range_test, valley
from kagglecv.train.run import train


def _toy(seed=0):
    """Two separable blobs as 1x4x4 'images' (uint8), and a tiny linear classifier."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (512,), generator=g)
    x = (torch.rand(512, 1, 4, 4, generator=g) * 60 + 100 + (y.view(-1, 1, 1, 1) * 2 - 1) * 40).to(
        torch.uint8
    )
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stepper = Stepper(model, optimizer=opt, device=torch.device("cpu"), mean=[0.5], std=[0.25], amp=False)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    return stepper, loader


def test_lr_find_restores_everything_and_suggests_a_sane_lr():
    stepper, loader = _toy()
    stepper.step(*next(iter(loader)))  # optimizer has state worth restoring
    before = {k: v.clone() for k, v in stepper.model.state_dict().items()}
    opt_before = {k: v.clone() for k, v in stepper.optimizer.state_dict()["state"][0].items()}
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    result = range_test(stepper, loader, iters=100)
    for k, v in stepper.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in stepper.optimizer.state_dict()["state"][0].items():
        assert torch.equal(v, opt_before[k]), k
    assert stepper.optimizer.param_groups[0]["lr"] == 1e-3
    # RNG streams continue as if lr_find never ran
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(1).item(), np.random.rand(), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    range_test(stepper, loader, iters=100)
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == expected
    # the loss on this toy falls between ~1e-3 and ~1 for AdamW; the valley must lie inside
    assert 1e-4 < result["suggestion"] < 1.0
    assert len(result["lrs"]) == len(result["losses"]) and len(result["lrs"]) <= 100
    assert result["lrs"] == sorted(result["lrs"])


def test_valley_picks_the_middle_of_the_descent():
    lrs = list(np.logspace(-6, 0, 61))
    losses = [2.0] * 20 + list(np.linspace(2.0, 0.5, 30)) + list(np.linspace(0.5, 3.0, 11))
    lr = valley(lrs, losses)
    assert lrs[30] <= lr <= lrs[40]


def test_training_after_lr_find_equals_training_with_that_lr(finished_run):
    """The finished run trained with lr=auto; fold 0 trained again with the LR it found typed in is
    bit-identical. On the CPU: bit-identical weights need deterministic kernels."""
    from kagglecv.core.competition import load_competition

    found = json.loads((finished_run / "lr_find.json").read_text())["suggestion"]
    cfg_fixed = load_config("configs/smoke.yaml", [*FINISHED_RUN_ARGS, "train_folds=1", f"lr={found!r}"])
    run_fixed = train(load_competition("digits-demo"), cfg_fixed)
    a, meta_a = load_checkpoint(finished_run / "fold0.pt")
    b, _ = load_checkpoint(run_fixed / "fold0.pt")
    assert meta_a.lr == found
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (finished_run / "lr_find.png").stat().st_size > 1000


def test_lr_find_json_is_written_atomically(tmp_path, monkeypatch):
    """A disk that fills up halfway through leaves no half lr_find.json for a resumed run to read."""
    from pathlib import Path

    from kagglecv.train.lr_find import save_range_test

    result = {
        "lrs": [1e-4, 1e-3, 1e-2],
        "losses": [1.0, 0.5, 2.0],
        "raw_losses": [1, 0.5, 2],
        "suggestion": 1e-3,
    }
    real_write_text = Path.write_text

    def disk_fills_up(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_fills_up)
    with pytest.raises(OSError):
        save_range_test(result, tmp_path)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert list(tmp_path.iterdir()) == []  # neither a half lr_find.json nor a temporary file
    save_range_test(result, tmp_path)
    assert json.loads((tmp_path / "lr_find.json").read_text())["chosen"] == 1e-3


def test_the_lr_find_command_writes_its_own_folder(digits_small):
    from kagglecv.cli import main

    assert (
        main(["lr-find", "--comp", "digits-small", "--config", "configs/smoke.yaml", "lr_find_iters=10"]) == 0
    )
    (out,) = (digits_small / "runs" / "digits-small" / "lr-find").iterdir()
    result = json.loads((out / "lr_find.json").read_text())
    assert result["chosen"] == result["suggestion"] and len(result["lrs"]) <= 10
    assert (out / "lr_find.png").exists()
