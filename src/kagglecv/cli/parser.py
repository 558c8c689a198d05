"""The grammar of the `kagglecv` command: every sub-command, option and help text (argparse only).

One spelling across commands, the way the kaggle CLI has one: `-c/--comp` names the competition and
`-r/--run` the run everywhere; the older positional forms (`kagglecv data <comp>`, `kagglecv report
<run>`) still work. Recipe settings are `key=value` words, never flags. commands.py holds what each
command does.
"""

from __future__ import annotations

import argparse
import sys

from kagglecv.cli.make_words import switch_words

CONFIG_HELP = "recipe overrides, any key of the --config YAML, e.g. epochs=3 lr=auto model=resnet18"
LR_FIND_HELP = "recipe overrides, e.g. model=resnet18 img_size=224 batch_size=32 lr_find_iters=200"
COMP_HELP = "competition slug (default: the one `make data` prepared last)"


class Parser(argparse.ArgumentParser):
    switches: set[str] = set()  # every on/off option of every command ("--upload"), as add_argument saw them

    def add_argument(self, *names, **kwargs):
        if kwargs.get("action") == "store_true":
            Parser.switches.update(n for n in names if n.startswith("--"))
        return super().add_argument(*names, **kwargs)

    def error(self, message: str):
        if "unrecognized arguments: --" in message:
            message += " (recipe settings are key=value words, e.g. epochs=3, not --epochs 3)"
        super().error(message)


def _int_at_least(low: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    return check


def _comp_option(s: argparse.ArgumentParser, helptext: str = COMP_HELP) -> None:
    s.add_argument("-c", "--comp", default="", help=helptext)


RUN_HELP = "run id under runs/<comp>/ (default: the latest finished run)"


def _run_option(s: argparse.ArgumentParser, helptext: str = RUN_HELP) -> None:
    s.add_argument("-r", "--run", default="", help=helptext)


def _recipe(s: argparse.ArgumentParser, default: str, helptext: str, overrides: str = CONFIG_HELP) -> None:
    s.add_argument("--config", default=default, help=f"training recipe YAML (default: %(default)s{helptext})")
    s.add_argument("overrides", nargs="*", metavar="key=value", help=overrides)


def _add_data(sub) -> None:
    s = sub.add_parser(
        "data",
        help="fetch a competition's files into data/<comp>/raw and lay out class folders + folds",
        description="Fetch raw files (once), lay them out as train/<class>/, test/, folds.csv. "
        "Idempotent: a prepared competition is not redone unless --force.",
    )
    slug = "competition slug: competitions/<slug>.yaml, or a new Kaggle slug (its YAML is drafted)"
    _comp_option(s, slug)
    s.add_argument("comp_pos", nargs="?", metavar="COMP", help="the same, as a word (older spelling)")
    s.add_argument("--force", action="store_true", help="fetch and lay out again even if already prepared")
    s.add_argument(
        "--draft",
        action="store_true",
        help="draft competitions/<comp>.yaml from the Kaggle download, even if the name is close to a "
        "known one; an existing YAML is kept and the draft written beside it as <comp>.draft.yaml",
    )
    s.add_argument(
        "--src",
        default="",
        metavar="DIR",
        help="your own images: DIR/<class>/** (writes competitions/<comp>.yaml if there is none)",
    )


def _add_train(sub) -> None:
    for name, helptext in (
        ("train", "k-fold fine-tune: LR range test (lr=auto), one model per fold, out-of-fold predictions"),
        ("lr-find", "run only the LR range test and save lr_find.png/json"),
    ):
        s = sub.add_parser(name, help=helptext, description=helptext)
        _comp_option(s)
        _recipe(
            s,
            "configs/default.yaml",
            ", a pretrained resnet50",
            CONFIG_HELP if name == "train" else LR_FIND_HELP,
        )
        if name == "lr-find":
            continue
        s.add_argument(
            "--resume",
            action="store_true",
            help="continue the latest unfinished run (or --run NAME) from its last completed epoch",
        )
        s.add_argument(
            "-r",
            "--run",
            "--run-name",
            dest="run",
            default="",
            help="name the run folder (to split folds across machines or resume it)",
        )
        s.add_argument(
            "--gpus",
            type=int,
            default=1,
            help="data-parallel processes via torchrun (GPUs; CPU processes with gloo when no CUDA)",
        )
        s.add_argument(
            "--parallel",
            choices=("data", "folds"),
            default="data",
            help="with --gpus N: data = one fold at a time over N GPUs (DDP); folds = N folds at once, one "
            "process per GPU (per CPU share with device=cpu), no gradient sync (default: %(default)s)",
        )
        s.add_argument(
            "--folds",
            default="",
            help="train only these fold ids, e.g. 0,1 (others elsewhere; RESUME then gathers them). "
            "The recipe key train_folds=N (called folds=N in older YAMLs) trains the first N",
        )


def _add_tune(sub) -> None:
    helptext = (
        "Optuna search over the recipe's tune: block (see configs/tune-demo.yaml): short trainings on the "
        "first tune_folds folds, pruned on per-epoch validation; the best trial -> configs/tuned-<comp>.yaml"
    )
    s = sub.add_parser("tune", help=helptext, description=helptext)
    _comp_option(s)
    _recipe(s, "configs/default.yaml", "; its tune: block is the search space")
    s.add_argument(
        "--trials", default="", help="stop when the study holds this many finished trials (all machines)"
    )
    s.add_argument("--budget", default="", help="stop starting trials after this long here: 600s, 30m, 2h")
    s.add_argument(
        "--storage",
        default="",
        help="database URL of the study (default: $KAGGLECV_STORAGE, else sqlite:///runs/<comp>/tune.db); "
        "one URL on several machines: they work on one study. A URL with a password: set "
        "KAGGLECV_STORAGE instead, which `ps` does not show",
    )


def _add_submit_report(sub) -> None:
    helptext = "predict the test set with a run's folds (+TTA), write and check the CSV, score it, upload it"
    s = sub.add_parser("submit", help=helptext, description=helptext)
    _comp_option(s)
    _run_option(s)
    s.add_argument(
        "--upload", action="store_true", help="also upload the file to Kaggle (logged in submissions/log.csv)"
    )
    s.add_argument(
        "--again",
        action="store_true",
        help="upload even a file whose very bytes the competition already took (asked on a terminal, "
        "refused elsewhere without this)",
    )
    s.add_argument(
        "-m", "--message", default="", help="words for the submission's description (run id and CV are added)"
    )
    s.add_argument(
        "--tta",
        choices=("auto", "none"),
        default="auto",
        help="auto: the test-time augmentation that scores best on the out-of-fold images (flips the "
        "competition allows, a 1.15x scale), plain prediction unless one helps; none: plain (default: auto)",
    )
    s.add_argument(
        "--kernel",
        action="store_true",
        help="code competitions: submit the run's notebook version pushed by `kagglecv kernel --push`",
    )
    _add_kernel(sub)

    helptext = (
        "write runs/<comp>/<run>/report.html: LR plot, curves, confusion matrix, top losses, suspect labels"
    )
    s = sub.add_parser("report", help=helptext, description=helptext)
    run = "run id under runs/<comp>/ or a run folder (default: the latest finished)"
    _run_option(s, run)
    s.add_argument("run_pos", nargs="?", metavar="RUN", help="the same, as a word (older spelling)")
    _comp_option(s)
    s.add_argument(
        "--look",
        action="store_true",
        help="always build the look-inside section (galleries, Grad-CAM heatmaps, data map); by default "
        "it is built only when it takes under a minute, and the time is printed either way",
    )


def _add_kernel(sub) -> None:
    helptext = (
        "code competitions: a Kaggle dataset (export + kagglecv wheel) and a notebook for a run in "
        "kernels/<comp>-<run>/, run here first with no network and checked against `submit`'s file"
    )
    s = sub.add_parser(
        "kernel",
        help=helptext,
        description=helptext + ". With --push: the dataset and notebook go to Kaggle, the run is followed "
        "to its end and its output fetched; then `kagglecv submit --kernel` submits it.",
    )
    _comp_option(s)
    _run_option(s)
    s.add_argument(
        "--push", action="store_true", help="after a dry run that passes: push and run it on Kaggle"
    )
    s.add_argument("--force", action="store_true", help="rebuild kernels/<comp>-<run>/ when it exists")


def _add_bench(sub) -> None:
    s = sub.add_parser(
        "bench",
        help="images/s of (a) the model alone, (b) the data pipeline alone, (c) full training; (c)/(a), (c)/(b)",
        description="Throughput on a synthetic dogs-vs-cats-sized JPEG set. CPU default: resnet18 at 128 px; "
        "on a GPU try --models resnet50,convnext_tiny --img-size 224. Writes runs/bench/latest.json.",
    )
    s.add_argument("--models", default="resnet18", help="comma-separated timm model names")
    s.add_argument(
        "--img-size", type=_int_at_least(8), default=128, help="training resolution (default: 128)"
    )
    s.add_argument("--batch-size", type=_int_at_least(1), default=32, help="images per batch (default: 32)")
    s.add_argument(
        "--images",
        type=_int_at_least(1),
        default=512,
        help="synthetic JPEGs to generate, once (default: 512)",
    )
    s.add_argument(
        "--batches", type=_int_at_least(1), default=10, help="timed batches per measurement (default: 10)"
    )
    s.add_argument(
        "--workers",
        type=_int_at_least(0),
        default=None,
        help="DataLoader workers (default: as training picks)",
    )
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    s.add_argument(
        "--fastai",
        action="store_true",
        help="instead: digits-demo k-fold training through kagglecv and through fastai (bench extra), timed",
    )
    s.add_argument(
        "overrides", nargs="*", metavar="key=value", help="recipe overrides for --fastai (configs/demo.yaml)"
    )


def _add_compete(sub) -> None:
    helptext = "every run of a competition in one table, best CV first (also runs/<comp>/runs.csv, runs.html)"
    s = sub.add_parser("runs", help=helptext, description=helptext)
    _comp_option(s)

    helptext = (
        "blend finished runs with weights fitted on their out-of-fold predictions (honest nested CV) "
        "-> runs/<comp>/blend-<id>/; submit it with --run blend-<id>"
    )
    s = sub.add_parser("blend", help=helptext, description=helptext)
    _comp_option(s)
    s.add_argument(
        "--runs",
        nargs="*",
        default=[],
        metavar="RUN",
        help="run ids to blend (default: every finished run with the same folds as the best one)",
    )

    helptext = (
        "fetch the public leaderboard score of every upload (submissions/log.csv) from Kaggle and show "
        "CV against public LB, with the two best-CV submissions to pick as finals"
    )
    s = sub.add_parser("lb", help=helptext, description=helptext)
    _comp_option(s)


def _add_predict_export(sub) -> None:
    helptext = (
        "ask a run about new images (files, folders, globs): class and probability (top-k), with the "
        "same decoding, fold ensemble, TTA and post-processing as submit; a table and a CSV"
    )
    s = sub.add_parser("predict", help=helptext, description=helptext)
    _comp_option(s)
    _run_option(s)
    s.add_argument(
        "images", nargs="*", metavar="IMAGE", help="image files, folders (recursive) or quoted globs"
    )
    s.add_argument(
        "--img",
        default="",
        metavar="TEXT",
        help="more of them in one word, as make passes IMG: one path (spaces and all) when it names one, "
        "else paths separated by spaces, quoted as in the shell",
    )
    s.add_argument(
        "-k", "--top-k", type=_int_at_least(1), default=3, help="classes shown per image (default: 3)"
    )
    s.add_argument(
        "-o", "--out", default="", help="CSV file or folder (default: predictions/<comp>-<run>-<time>.csv)"
    )

    helptext = (
        "export a run to exports/<comp>-<run>/: fold weights as safetensors, model.json, a standalone "
        "predict.py (torch, timm, numpy, Pillow only) and an ONNX model checked against PyTorch"
    )
    s = sub.add_parser("export", help=helptext, description=helptext)
    _comp_option(s)
    _run_option(s)
    s.add_argument(
        "--force", action="store_true", help="replace an existing export (kept until the new one is complete)"
    )
    s.add_argument("-o", "--out", default="", help="export folder (default: exports/<comp>-<run>/)")


def build_parser() -> Parser:
    from kagglecv import __version__

    p = Parser(
        prog="kagglecv",
        description="Kaggle image competitions: prepare data, k-fold fine-tune a timm model, write a checked submission.",
        epilog="Typical flow: kagglecv data -c dogs-vs-cats && kagglecv train && kagglecv submit. "
        "Without -c/--comp, train, lr-find, submit, report and inspect use the competition prepared last. "
        "`kagglecv <command> --help` explains each one.",
    )
    p.add_argument("--version", action="version", version=f"kagglecv {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    helptext = "show the competitions kagglecv knows (competitions/*.yaml) and which are prepared"
    sub.add_parser("list", help=helptext, description=helptext)
    _add_data(sub)
    helptext = (
        "what the prepared data holds: class counts, sizes, dropped files, near duplicates, contact sheet"
    )
    s = sub.add_parser("inspect", help=helptext, description=helptext)
    _comp_option(s)
    s.add_argument(
        "--samples",
        type=_int_at_least(1),
        default=8,
        help="images per class on the contact sheet (default: 8)",
    )
    _add_train(sub)
    _add_tune(sub)
    _add_submit_report(sub)
    _add_compete(sub)
    _add_predict_export(sub)
    helptext = "every recipe key: its default, type and meaning, and its value in --config X (with overrides)"
    s = sub.add_parser("config", help=helptext, description=helptext)
    s.add_argument(
        "--config", default="", help="a recipe YAML to show beside the defaults, e.g. configs/default.yaml"
    )
    s.add_argument("overrides", nargs="*", metavar="key=value", help=CONFIG_HELP)
    _add_bench(sub)
    s = sub.add_parser(
        "demo", help="data -> train -> submit on the built-in digits-demo, offline, on the CPU"
    )
    _recipe(s, "configs/demo.yaml", "")
    return p


def _merge(p: Parser, args: argparse.Namespace, option: str, positional: str) -> None:
    """The positional spelling into the option; both given and different is an error."""
    word = getattr(args, positional, None)
    if word and getattr(args, option) and word != getattr(args, option):
        p.error(
            f"{args.command}: two different {option}s given ({word!r} and --{option} {getattr(args, option)!r})"
        )
    if word:
        setattr(args, option, word)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line as one Namespace: `comp` and `run` whichever way they were spelled. A switch
    given a word that is neither on nor off is a UserError."""
    p = build_parser()
    args = p.parse_args(switch_words(sys.argv[1:] if argv is None else list(argv), Parser.switches))
    _merge(p, args, "comp", "comp_pos")
    _merge(p, args, "run", "run_pos")
    return args
