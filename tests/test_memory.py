"""Issue 14, the memory guard on the CPU: an absurd batch is refused in seconds, before a run folder
or an image cache exists, with what would fit; `batch_size: auto` picks a sane batch; the estimate
grows with the batch and the image area and leaves the RNG streams alone."""

import time

import pytest
import torch

import kagglecv.train.memory as memory
from helpers.cli import cli_text
from kagglecv.cli import main
from kagglecv.core.competition import load_competition
from kagglecv.core.config import load_config
from kagglecv.core.errors import UserError
from kagglecv.ml.model import create_model
from kagglecv.prepare.layout import read_folds, read_prepared
from kagglecv.train.memory import cpu_cost, fit_batch
from kagglecv.train.run import guard_memory

CPU = torch.device("cpu")
SIZES = dict(num_classes=10, n_images=1437, n_train=1150)


def test_absurd_batch_is_refused_before_anything_is_made(digits, capsys):
    t0 = time.time()
    args = ["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml", "device=cpu"]
    assert main([*args, "batch_size=100000", "img_size=512"]) == 2
    text = cli_text(capsys)
    assert time.time() - t0 < 60  # seconds alone; generous for a shared 2-core machine
    assert "memory guard: test_resnet at 512px with batch_size=100000 needs about" in text
    fits = int(text.split("batch_size=")[2].split()[0])  # "...: batch_size=N fits (...)"
    assert 1 <= fits < 100000 and f"accum_steps={-(-100000 // fits)}" in text
    assert not (digits / "runs").exists()
    assert not (digits / "data" / "digits-demo" / "cache").exists()  # no image was resized


def test_batch_auto_on_the_cpu_picks_a_sane_batch(digits):
    cfg = load_config("configs/smoke.yaml", ["batch_size=auto"])
    comp = load_competition("digits-demo")
    info = read_prepared(comp)
    guard_memory(comp, cfg, info, read_folds(comp, info), 32, CPU)
    assert cfg.batch_size == 64  # the CPU's cap: the config saved with the run records the number
    small = load_config(None, ["batch_size=auto", "model=test_resnet", "train_folds=2"])
    assert fit_batch(small, **{**SIZES, "n_train": 100}, size=32, device=CPU) == 8  # >= 8 steps an epoch


def test_the_auto_line_says_when_the_batch_is_only_the_cap(digits, capsys):
    """ "64 fits" read as "64 is the most that fits" when 64 was only where auto starts."""
    cfg = load_config("configs/smoke.yaml", ["batch_size=auto"])
    comp = load_competition("digits-demo")
    info = read_prepared(comp)
    guard_memory(comp, cfg, info, read_folds(comp, info), 32, CPU)
    said = cli_text(capsys)
    assert "batch_size auto: 64 (the cap: the most auto tries on cpu) fits at 32px on cpu; larger" in said
    from kagglecv.train.memory import auto_line

    assert auto_line(8, 100, 32, CPU).startswith("8 (the cap: an eighth of the 100 training images")
    assert (
        auto_line(4, 1150, 128, CPU)
        == "4 fits at 128px on cpu (the largest power of 2 that does, below the cap of 64)"
    )


def test_auto_halves_to_what_fits_and_refuses_when_nothing_does(monkeypatch):
    cfg = load_config(None, ["batch_size=auto", "model=test_resnet", "cache=disk"])
    cost = cpu_cost(cfg, create_model("test_resnet", num_classes=10), 128, 1437)
    room = cost.at(5) / memory.HEADROOM  # room for 5 images: auto takes 4
    monkeypatch.setattr(memory, "available_ram", lambda: room)
    assert fit_batch(cfg, **SIZES, size=128, device=CPU) == 4
    monkeypatch.setattr(memory, "available_ram", lambda: cost.fixed)  # not even one image
    with pytest.raises(UserError, match="even batch_size=1 does not fit; lower img_size"):
        fit_batch(cfg, **SIZES, size=128, device=CPU)


def test_estimate_grows_with_batch_and_area_and_keeps_the_rng():
    cfg = load_config(None, ["model=test_resnet", "cache=disk"])
    model = create_model("test_resnet", num_classes=10)
    small, large = cpu_cost(cfg, model, 64, 1437), cpu_cost(cfg, model, 128, 1437)
    assert large.per_image == pytest.approx(4 * small.per_image, rel=0.05)
    assert large.at(64) > large.at(32) > large.fixed
    torch.manual_seed(7)
    before = torch.get_rng_state()
    fit_batch(cfg, **SIZES, size=32, device=CPU)
    assert torch.equal(torch.get_rng_state(), before)  # the guard draws nothing training would


@pytest.mark.parametrize("value", ["big", 0])
def test_bad_batch_size_is_a_config_error(value):
    with pytest.raises(UserError, match="batch_size must be"):
        load_config(None, [f"batch_size={value}"])
