"""make tune (issue 14): the search space's rules, a tiny study on digits-small that prunes, is
interrupted and continues, and two processes working on one SQLite study."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from helpers.cli import cli_text
from helpers.repo import REPO
from kagglecv.cli import main
from kagglecv.core.config import load_config
from kagglecv.core.errors import UserError
from kagglecv.tune.space import parse_space
from kagglecv.tune.study import parse_budget

BASE = ["--comp", "digits-small", "--config", "configs/tune-tiny.yaml"]  # written by _tiny_recipe


def test_the_space_rules():
    settings, params = parse_space(
        {
            "model": ["test_resnet", "resnet10t"],
            "img_size": {"choices": [24, 32]},
            "epochs": [5, 15],
            "lr_mult": [0.3, 3.0],
            "label_smoothing": [0.0, 0.2],
            "mixup": {"low": 0.0, "high": 0.4},
            "tune_folds": 2,
        },
        "t",
    )
    kinds = {p.name: (p.kind, p.log) for p in params}
    assert kinds == {
        "model": ("choice", False),
        "img_size": ("choice", False),
        "epochs": ("int", False),
        "lr_mult": ("float", True),  # both > 0 and a decade apart: log
        "label_smoothing": ("float", False),
        "mixup": ("float", False),
    }
    assert settings.tune_folds == 2


@pytest.mark.parametrize(
    "block, message",
    [
        (
            {"label_smothing": [0.0, 0.2]},
            "unknown tune key 'label_smothing'. Did you mean 'label_smoothing'?",
        ),
        ({"epochs": [1.5, 3.0]}, "'epochs' must be int"),
        ({"label_smoothing": [0.2, 0.1]}, "needs low < high"),
        ({"lr": [0.001, 0.01], "lr_mult": [0.3, 3.0]}, "tune either lr or lr_mult"),
        ({"lr_mult": {"choices": [0, 1.0]}}, "lr_mult multiplies the range test's LR"),
        ({"seed": [1, 5]}, "'seed' is not a hyperparameter to tune"),
        ({"tune_folds": 0}, "tune_folds must be 1 or more"),
    ],
)
def test_a_bad_space_is_one_line(block, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse_space(block, "t")


def test_budgets_and_a_recipe_with_a_tune_block_still_trains():
    assert [parse_budget(t) for t in ("600s", "30m", "2h", "90", "")] == [600, 1800, 7200, 90, None]
    with pytest.raises(UserError, match="BUDGET must look like"):
        parse_budget("ten minutes")
    assert load_config(REPO / "configs" / "tune-demo.yaml").model == "test_resnet"  # tune: is not a key


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "ten"], "TRIALS must be a whole number, got 'ten'"),
        (["--budget", "soon"], "BUDGET must look like 600s, 30m or 2h, got 'soon'"),
        (["--trials", "0"], "TRIALS must be 1 or more, got '0' (empty for no limit)"),
        (["--budget", "0"], "BUDGET must be 1 second or more, got '0'"),
        (["--budget", "0.5s"], "BUDGET must be 1 second or more, got '0.5s'"),
        (["--budget", "0.01m"], "BUDGET must be 1 second or more, got '0.01m'"),
        (["--trials", "²"], "TRIALS must be a whole number, got '²'"),
        ([], "give TRIALS=N or BUDGET=30m (or both)"),
        (["--trials", "2", "mixup=-1"], "mixup must not be negative"),
    ],
)
def test_tune_command_line_errors_are_one_line(workdir, capsys, args, message):
    assert main(["tune", "--comp", "digits-demo", "--config", "configs/tune-demo.yaml", *args]) == 2
    assert message in cli_text(capsys)


def _tiny_recipe(workdir, batch_size=32, **space):
    recipe = yaml.safe_load((workdir / "configs" / "smoke.yaml").read_text())
    recipe.update(device="cpu", train_folds=2, tune={"startup_trials": 1, "warmup_epochs": 0, **space})
    recipe.update(batch_size=batch_size)
    (workdir / "configs" / "tune-tiny.yaml").write_text(yaml.safe_dump(recipe))


@pytest.mark.slow  # ~8 s
def test_a_study_prunes_is_interrupted_and_continues(digits_small, monkeypatch, capsys):
    import optuna

    _tiny_recipe(digits_small, batch_size=8, lr_mult=[0.001, 30.0])  # 20 steps an epoch on 160 images
    runs = digits_small / "runs" / "digits-small"
    db = runs / "tune.db"
    # the range test's LR as tune caches it (test_two_processes_share_one_study runs it): lr_mult
    # multiplies a known-good 0.003 here, so trial 0 surely learns and trial 1 surely does not
    lr_cache = runs / "tune" / "lr" / "test_resnet-32px-bs8"
    lr_cache.mkdir(parents=True)
    (lr_cache / "lr_find.json").write_text(json.dumps({"chosen": 0.003}))
    study = optuna.create_study(
        study_name="digits-small-tune-tiny", storage=f"sqlite:///{db}", direction="maximize"
    )
    study.enqueue_trial({"lr_mult": 3.0})  # learns in one epoch
    study.enqueue_trial({"lr_mult": 0.001})  # does not: behind the first at epoch 0, so pruned
    assert main(["tune", *BASE, "--trials", "2"]) == 0
    text = cli_text(capsys)
    assert "trial 0 complete" in text and "trial 1 pruned" in text, text
    tuned = digits_small / "configs" / "tuned-digits-small.yaml"
    recipe = load_config(tuned)  # a whole recipe, ready for make train
    assert recipe.train_folds == 2 and recipe.lr == pytest.approx(study.trials[0].user_attrs["lr"])
    assert study.trials[0].user_attrs["lr"] == pytest.approx(3.0 * 0.003)  # lr_mult x the cached LR
    assert (runs / "tune.html").exists()
    assert not list(runs.glob("*/config.yaml"))  # trials stay out of `make runs`

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("kagglecv.train.run.train", interrupted)
        assert main(["tune", *BASE, "--trials", "3"]) == 130
    assert "rerun the same `make tune`" in cli_text(capsys)
    assert main(["tune", *BASE, "--trials", "3"]) == 0  # the study continues where it stopped
    text = cli_text(capsys)
    assert "2 trials so far" in text and "trial 3 " in text, text
    states = [
        t.state.name
        for t in optuna.load_study(study_name="digits-small-tune-tiny", storage=f"sqlite:///{db}").trials
    ]
    assert states[:3] == ["COMPLETE", "PRUNED", "FAIL"] and states[3] in ("COMPLETE", "PRUNED"), states


@pytest.mark.slow  # two processes import torch and train
def test_two_processes_share_one_study(digits_small):
    _tiny_recipe(digits_small, lr_mult=[0.3, 3.0])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "KAGGLECV_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kagglecv", "tune", *BASE, "--trials", "3"]
    procs = [
        subprocess.Popen(cmd, cwd=digits_small, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    import optuna

    runs = digits_small / "runs" / "digits-small"
    study = optuna.load_study(study_name="digits-small-tune-tiny", storage=f"sqlite:///{runs / 'tune.db'}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # both worked on it: each process reports a trial it finished itself (a trial it started counts
    # only once finished, so the other cannot end the study under it)
    assert len(finished) >= 3 and all(re.search(r"trial \d+ (complete|pruned)", o) for o in outs), outs
    assert len(list((runs / "tune" / "lr").glob("*/lr_find.json"))) == 1  # one range test


# ---- issue 22: what a study says, and what it leaves --------------------------------------------


def test_tune_with_the_default_recipe_and_no_weights_is_one_line(digits_small, tmp_path, monkeypatch, capsys):
    """resnet50 pretrained, the hub unreachable and nothing cached: every trial failed and the report of
    the first one was a traceback (optuna keeps no fail_reason); now one line before any trial."""
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    assert main(["tune", "--comp", "digits-small", "--trials", "2"]) == 2
    text = cli_text(capsys)
    assert "error: could not load pretrained weights for 'resnet50'" in text and "unreachable" in text, text
    assert "trial 0" not in text


def test_failing_trials_say_why_and_three_in_a_row_stop_the_study(digits_small, capsys):
    _tiny_recipe(digits_small, model=["no_such_net_a", "no_such_net_b"])
    assert main(["tune", *BASE, "--trials", "10"]) == 2
    text = cli_text(capsys)
    assert re.search(r"trial 0 fail: .* · unknown timm model 'no_such_net_[ab]'", text), text
    assert "error: the last 3 trials failed, so the study stopped: unknown timm model" in text
    assert "trial 3 " not in text


def test_args_win_over_the_tune_block_and_name_their_own_study(digits_small, capsys):
    from kagglecv.core.competition import load_competition
    from kagglecv.tune.study import load_tune_recipe, run_tune

    _tiny_recipe(digits_small, epochs=[1, 3], mixup=[0.0, 0.4])
    comp = load_competition("digits-small")
    run_tune(comp, "configs/tune-tiny.yaml", [], trials=0, budget=None)
    text = cli_text(capsys)
    assert "study digits-small-tune-tiny (" in text and "epochs int [1, 3]" in text, text
    run_tune(comp, "configs/tune-tiny.yaml", ["epochs=2"], trials=0, budget=None)
    text = cli_text(capsys)
    assert (
        "note: ARGS win over the tune: block: not searched, fixed for every trial: epochs int [1, 3] (ARGS epochs=2)"
        in text
    )
    assert "study digits-small-tune-tiny-epochs=2 (" in text and "0 trials so far" in text, text
    assert "epochs int" not in text.split("trials so far")[1]
    with pytest.raises(UserError, match="ARGS fix every key the search would tune"):
        load_tune_recipe("configs/tune-tiny.yaml", ["epochs=2", "mixup=0.1"])


def test_a_recipe_without_a_tune_block_says_the_built_in_space(digits_small, capsys):
    from kagglecv.core.competition import load_competition
    from kagglecv.tune.study import run_tune

    run_tune(load_competition("digits-small"), "configs/smoke.yaml", [], trials=0, budget=None)
    assert (
        "note: configs/smoke.yaml has no tune: block, so the built-in space is searched: lr_mult float "
        "[0.3, 3.0] log, label_smoothing float [0.0, 0.2], mixup float [0.0, 0.4]"
    ) in cli_text(capsys)


def _finished_study(name: str, value: float):
    """A study holding one finished trial with this score (no training: the files it leaves are the point)."""
    import optuna

    study = optuna.create_study(study_name=name, direction="maximize")
    mixup = optuna.distributions.FloatDistribution(0.0, 0.4)
    config = load_config("configs/smoke.yaml", ["mixup=0.1"]).to_dict()  # what the trial trained
    study.add_trial(
        optuna.trial.create_trial(
            params={"mixup": 0.1}, distributions={"mixup": mixup}, value=value, user_attrs={"config": config}
        )
    )
    return study


def test_a_later_study_replaces_the_tuned_recipe_only_with_a_better_score(workdir, capsys):
    from kagglecv.core.competition import load_competition
    from kagglecv.tune.page import write_outputs

    comp, root = load_competition("digits-small"), workdir / "runs" / "digits-small"
    root.mkdir(parents=True)
    tuned = workdir / "configs" / "tuned-digits-small.yaml"

    def study(name, value):
        out = write_outputs(_finished_study(name, value), comp, {}, "configs/smoke.yaml", root)
        return out, cli_text(capsys)

    out, _ = study("first", 0.9)
    assert out["yaml"] == "configs/tuned-digits-small.yaml" and "study first" in tuned.read_text()
    out, text = study("worse", 0.8)
    assert "study first" in tuned.read_text() and out["yaml"] == "configs/tuned-worse.yaml"
    assert (
        "note: configs/tuned-digits-small.yaml (study first: accuracy 0.9000) is not beaten by 0.8000: kept"
        in text
    )
    assert load_config(workdir / "configs" / "tuned-worse.yaml").mixup == 0.1  # a whole recipe all the same
    out, _ = study("better", 0.95)
    assert out["yaml"] == "configs/tuned-digits-small.yaml" and "study better" in tuned.read_text()
    tuned.write_text("model: resnet18\n")  # the user's own file of that name
    out, text = study("best", 0.99)
    assert tuned.read_text() == "model: resnet18\n" and out["yaml"] == "configs/tuned-best.yaml"
    assert "was not written by make tune: kept" in text


SECRET_URL = "postgresql://kaggler:s3cret@127.0.0.1:1/tune"


@pytest.mark.parametrize("storage", ["garbage", SECRET_URL, "redis://localhost/0"])
def test_a_storage_optuna_cannot_open_is_one_line_without_the_password(digits_small, capsys, storage):
    """STORAGE=garbage gave a traceback; a database URL's password was printed with the study."""
    _tiny_recipe(digits_small)
    assert main(["tune", *BASE, "--trials", "1", "--storage", storage]) == 2
    text = cli_text(capsys)
    shown = storage.replace("s3cret", "***")
    assert f"cannot open the tune study's storage '{shown}'" in text and "s3cret" not in text, text
    assert "KAGGLECV_STORAGE" in text


def test_the_storage_url_comes_from_the_environment_and_prints_masked(digits_small, capsys, monkeypatch):
    import optuna

    _tiny_recipe(digits_small)
    elsewhere = digits_small / "elsewhere.db"
    study = optuna.create_study(
        study_name="digits-small-tune-tiny", storage=f"sqlite:///{elsewhere}", direction="maximize"
    )
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)  # --trials 1 is done: nothing trains
    monkeypatch.setenv("KAGGLECV_STORAGE", f"sqlite:///{elsewhere}")
    assert main(["tune", *BASE, "--trials", "1"]) == 0
    assert not (digits_small / "runs" / "digits-small" / "tune.db").exists()
    assert f"(sqlite:///{elsewhere}): 1 trials so far" in cli_text(capsys)
    # a server database, reached here through a local file (no server in a test): only the URL counts
    real, asked = optuna.create_study, []
    monkeypatch.setattr(
        optuna,
        "create_study",
        lambda **kw: asked.append(kw["storage"]) or real(**{**kw, "storage": f"sqlite:///{elsewhere}"}),
    )
    monkeypatch.setenv("KAGGLECV_STORAGE", SECRET_URL)
    assert main(["tune", *BASE, "--trials", "1"]) == 0
    text = cli_text(capsys)
    assert (
        asked == [SECRET_URL]
        and "(postgresql://kaggler:***@127.0.0.1:1/tune)" in text
        and "s3cret" not in text
    )


def test_masked_url():
    from kagglecv.tune.storage import masked_url

    assert masked_url("postgresql://u:p@ss@host:5432/db") == "postgresql://u:***@host:5432/db"
    assert (
        masked_url("mysql+pymysql://u@host/db?password=x&ssl=1")
        == "mysql+pymysql://u@host/db?password=***&ssl=1"
    )
    assert masked_url("sqlite:///runs/c/tune.db") == "sqlite:///runs/c/tune.db"
    assert masked_url("garbage") == "garbage"


def test_a_recipe_name_with_a_space_makes_a_plain_study_that_a_better_one_replaces(workdir, capsys):
    """CONFIG="/tmp/my smoke.yaml": the study was named 'digits-small-my smoke', so the tuned recipe's
    first line no longer matched page.HEAD (\\S+) and every later study said it "was not written by make
    tune: kept"; its `make train CONFIG=...` hint did not paste either."""
    import shlex

    from kagglecv.core.competition import load_competition
    from kagglecv.tune.page import write_outputs
    from kagglecv.tune.study import study_name

    comp, root = load_competition("digits-small"), workdir / "runs" / "digits-small"
    root.mkdir(parents=True)
    tuned = workdir / "configs" / "tuned-digits-small.yaml"
    spaced = study_name(comp.slug, "/tmp/my smoke.yaml", ["mixup=0.1 ;x"])
    assert re.fullmatch(r"[A-Za-z0-9_.=+-]+", spaced), spaced
    write_outputs(_finished_study(spaced, 0.9), comp, {}, "/tmp/my smoke.yaml", root)
    assert f"study {spaced}:" in tuned.read_text()
    out = write_outputs(_finished_study(study_name(comp.slug, "other one.yaml", []), 0.8), comp, {}, "", root)
    assert out["yaml"] == "configs/tuned-digits-small-other_one.yaml", out
    assert f"(study {spaced}: accuracy 0.9000) is not beaten by 0.8000: kept" in cli_text(capsys)
    out = write_outputs(_finished_study("better", 0.95), comp, {}, "", root)
    assert out["yaml"] == "configs/tuned-digits-small.yaml" and "study better" in tuned.read_text()
    hint = (workdir / "configs" / "tuned-digits-small-other_one.yaml").read_text().splitlines()[2]
    assert shlex.split(hint.split("# train it: ")[1]) == [
        "make", "train", "COMP=digits-small", "CONFIG=configs/tuned-digits-small-other_one.yaml"
    ]  # fmt: skip


def test_a_budget_is_shown_as_given(digits_small, capsys):
    """BUDGET=0.5s was accepted and shown as a "0 s budget" (now refused: test_tune_command_line_errors_are_one_line);
    one of 1.5 s shows as 1.5 s."""
    from kagglecv.core.competition import load_competition
    from kagglecv.tune.study import run_tune

    comp = load_competition("digits-small")
    run_tune(comp, "configs/smoke.yaml", [], trials=0, budget=parse_budget("1.5s"))
    assert " · 1.5 s budget" in cli_text(capsys)
    run_tune(comp, "configs/smoke.yaml", [], trials=0, budget=parse_budget("30m"))
    assert " · 1800 s budget" in cli_text(capsys)


def test_a_trial_failing_offline_is_not_cut_inside_its_url(digits_small, tmp_path, monkeypatch, capsys):
    """Trials that each pick a pretrained model, the hub unreachable: their lines were cut at 300
    characters, mid-URL ("… https://hu; fix that and rerun"); now a trial's line ends between words
    with "…" and the study's last line holds the whole reason, its advice included."""
    from kagglecv.core.errors import one_line

    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9/" + "x" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    _tiny_recipe(digits_small, model=["resnet10t", "test_resnet"])
    recipe = digits_small / "configs" / "tune-tiny.yaml"
    recipe.write_text(recipe.read_text() + "pretrained: true\n")
    assert main(["tune", *BASE, "--trials", "5"]) == 2
    text = cli_text(capsys)
    url = "http://127.0.0.1:9/" + "x" * 40
    trials = re.findall(r"trial \d fail: .*? …(?= trial \d| no trial)", text)
    assert len(trials) == 3, text
    assert all(url in line or "http://127" not in line for line in trials), text
    last = text.split("error: the last 3 trials failed, so the study stopped: ")[1]
    assert f"{url} is unreachable" in last and "or pretrained=false.; fix that and rerun" in last, last
    assert one_line("a " * 10 + "https://example.com/long/path", 30) == "a a a a a a a a a a …"
    assert (
        one_line("https://example.com/" + "p" * 40 + " tail", 20) == "https://example.com/" + "p" * 40 + " …"
    )
