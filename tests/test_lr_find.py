import json
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from kagglecv.config import load_config
from kagglecv.engine import Stepper
from kagglecv.lr_find import lr_find, valley
from kagglecv.runs import load_checkpoint
from kagglecv.train import train


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
    stepper = Stepper(model, opt, torch.device("cpu"), [0.5], [0.25], amp=False, label_smoothing=0.0)
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
    result = lr_find(stepper, loader, iters=100)
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
    lr_find(stepper, loader, iters=100)
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


def test_training_after_lr_find_equals_training_with_that_lr(digits):
    # on the CPU: bit-identical weights need deterministic kernels, which a GPU's may not be
    cfg = load_config("configs/smoke.yaml", ["folds=1", "epochs=1", "lr=auto", "device=cpu"])
    from kagglecv.competition import load_competition

    comp = load_competition("digits-demo")
    run_auto = train(comp, cfg)
    found = json.loads((run_auto / "lr_find.json").read_text())["suggestion"]
    cfg_fixed = load_config("configs/smoke.yaml", ["folds=1", "epochs=1", f"lr={found!r}", "device=cpu"])
    run_fixed = train(comp, cfg_fixed)
    a, meta_a = load_checkpoint(run_auto / "fold0.pt")
    b, _ = load_checkpoint(run_fixed / "fold0.pt")
    assert meta_a["lr"] == found
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (run_auto / "lr_find.png").stat().st_size > 1000
