"""The `kagglecv` command: one sub-command per stage.

kagglecv data digits-demo          # source -> raw/ -> class folders + folds.csv
kagglecv train --config configs/demo.yaml epochs=10
kagglecv submit                    # latest run of the competition prepared last
kagglecv report                    # runs/<comp>/<run>/report.html for the latest run
kagglecv demo                      # all three on the built-in digits, offline
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .competition import COMPETITIONS_DIR
from .console import console
from .errors import UserError
from .files import disk_error

CONFIG_HELP = "recipe overrides, any key of the --config YAML, e.g. epochs=3 lr=auto model=resnet18"
LR_FIND_HELP = "recipe overrides, e.g. model=resnet18 img_size=224 batch_size=32 lr_find_iters=200"


class Parser(argparse.ArgumentParser):
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


def _comp(slug: str | None):
    from .competition import load_competition, resolve_slug

    return load_competition(resolve_slug(slug, say=console.print))


def cmd_list(args) -> None:
    from rich.table import Table

    from .competition import COMPETITIONS_DIR, known_competitions, load_competition
    from .layout import is_prepared

    table = Table(title=f"competitions in {COMPETITIONS_DIR}/")
    table.add_column("slug", no_wrap=True)  # slugs get copied: never cut them
    for col in ("source", "metric", "submission", "prepared"):
        table.add_column(col)
    broken = []
    for slug in known_competitions():
        try:
            c = load_competition(slug)
        except UserError as e:  # one broken file should not hide the others
            broken.append(str(e))
            table.add_row(slug, "[red]broken[/]", "", "", "")
            continue
        table.add_row(slug, c.source_kind, c.metric, f"{c.submission.kind}", "✓" if is_prepared(c) else "")
    console.print(table)
    for message in broken:
        console.print(f"[red]broken:[/] {message}", soft_wrap=True)


def cmd_data(args) -> None:
    from .competition import load_competition
    from .layout import prepare

    if not args.comp:
        raise UserError("which competition? `make data COMP=<slug>` (see `kagglecv list`)")
    if args.src:  # your own folder of class folders: write competitions/<comp>.yaml for it first
        from pathlib import Path

        from .sources.folder import write_competition

        write_competition(args.comp, Path(args.src))
    else:
        from .competition import COMPETITIONS_DIR

        if args.draft or not (COMPETITIONS_DIR / f"{args.comp}.yaml").exists():
            from .draft import draft_competition  # a Kaggle slug with no YAML yet: download, draft one

            draft_competition(args.comp, allow_similar=args.draft)
    prepare(load_competition(args.comp), force=args.force)


def cmd_inspect(args) -> None:
    from .inspection import inspect_data

    inspect_data(_comp(args.comp), samples=args.samples)


def _config(args):
    from .config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args) -> None:
    from .train import train

    cfg = _config(args)  # config errors first: they are cheaper to fix than a missing dataset
    comp = _comp(args.comp)
    if args.run and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", args.run):
        raise UserError(f"RUN must be a plain name (letters, digits, - _ .), got {args.run!r}")
    if args.gpus < 1:
        raise UserError(f"GPUS must be 1 or more, got {args.gpus}")
    fold_ids = _fold_list(args.folds)
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_train(args, cfg, comp, fold_ids)
        return
    run_dir = None
    if args.run:
        from .runs import RUNS_DIR

        run_dir = RUNS_DIR / comp.slug / args.run
        if args.resume and not run_dir.is_dir():
            raise UserError(f"no run '{args.run}' to resume in {RUNS_DIR / comp.slug}/")
    if args.resume and (args.overrides or args.config != "configs/default.yaml"):
        console.print(
            "[yellow]note:[/] a resumed run keeps the config it started with; CONFIG/ARGS are ignored"
        )
    run_dir = train(comp, cfg, run_dir=run_dir, fold_ids=fold_ids, resume=args.resume)
    from .dist import is_main

    if is_main() and (run_dir / "summary.json").exists():
        _print_cv(run_dir)
        from .report import write_report

        write_report(run_dir, comp.data_dir, show_cv=False)  # the CV table was just printed


def _print_cv(run_dir) -> None:
    from .report import cv_table, load_run  # one CV table for the terminal, the report and `report`
    from .runs import read_summary

    console.print(cv_table(load_run(run_dir)))
    summary = read_summary(run_dir)
    console.print(f"trained in {summary['seconds']:.0f} s on {summary['device']}")


def _relaunch_train(args, cfg, comp, fold_ids) -> None:
    """GPUS=N: every check that can fail runs here, once, before torchrun starts N processes."""
    from .dist import relaunch_train
    from .locks import LOCK_NAME, is_locked
    from .runs import RUNS_DIR, latest_unfinished, run_name
    from .train import preflight

    if not args.run and "--nnodes" in os.environ.get("TORCHRUN", ""):
        raise UserError(
            "several machines need one run name: add RUN=<name> (the same on every machine), and keep "
            "runs/ and data/ on storage all machines share"
        )
    # one name for all ranks: the run to resume, or a new one
    run = args.run or (latest_unfinished(comp.slug).name if args.resume else run_name(cfg.model))
    run_dir = RUNS_DIR / comp.slug / run
    if args.resume:
        from .config import config_from_dict, read_yaml

        if not (run_dir / "config.yaml").exists():
            raise UserError(f"no run '{run}' to resume in {RUNS_DIR / comp.slug}/")
        cfg = config_from_dict(read_yaml(run_dir / "config.yaml", "run config"))  # its own recipe and device
    if is_locked(run_dir / LOCK_NAME):
        raise UserError(
            f"run {run} is already being trained (see {run_dir / LOCK_NAME}); wait for it to finish"
        )
    preflight(comp, cfg, fold_ids)
    relaunch_train(
        args.gpus,
        comp=comp.slug,
        config=args.config,
        run=run,
        folds=args.folds,
        resume=args.resume,
        overrides=args.overrides,
        cpu=cfg.device == "cpu",
    )


def _fold_list(text: str) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(k) for k in text.replace(" ", "").split(",") if k != ""})
    except ValueError:
        raise UserError(f"FOLDS must be fold numbers separated by commas, e.g. 0,1 — got {text!r}") from None


def cmd_lr_find(args) -> None:
    from .train import lr_find_command

    cfg = _config(args)
    lr_find_command(_comp(args.comp), cfg)


def cmd_submit(args) -> None:
    from .submit import submit

    comp = _comp(args.comp)
    result = submit(comp, args.run or None)
    if args.upload:
        from pathlib import Path

        from .upload import upload

        upload(comp, Path(result["file"]), result["run"], result["cv_mean"], args.message or None)
    elif args.message:
        console.print(
            "[yellow]note:[/] MSG is the upload's description; nothing was uploaded without UPLOAD=1"
        )
    elif comp.source_kind == "kaggle" and comp.submission.upload:
        console.print(
            f"not uploaded; to send it to Kaggle: make submit UPLOAD=1 RUN={result['run']} [MSG=...]"
        )


def cmd_report(args) -> None:
    from pathlib import Path

    from .report import write_report

    run = args.run or ""
    if run and (Path(run) / "summary.json").exists():  # a run folder's path: no competition needed
        write_report(Path(run))
        return
    from .runs import find_run

    comp = _comp(args.comp)
    write_report(find_run(comp.slug, run or None), comp.data_dir)


def cmd_demo(args) -> None:
    """data -> train -> submit on digits-demo, in one process (one import of torch, not three)."""
    import time

    from .competition import load_competition
    from .config import load_config
    from .layout import prepare
    from .submit import submit
    from .train import train

    t0 = time.time()
    cfg = load_config(args.config, args.overrides)
    comp = load_competition("digits-demo")
    prepare(comp)
    run_dir = train(comp, cfg)
    _print_cv(run_dir)
    result = submit(comp, run_dir.name)
    from .report import write_report

    write_report(run_dir, comp.data_dir, show_cv=False)  # after submit, so it shows the test score
    console.print(
        f"[bold green]demo done[/] in {time.time() - t0:.0f} s: CV {result['cv_mean']:.4f}, "
        f"test {result.get('test_score', float('nan')):.4f} -> {result['file']}"
    )


def cmd_bench(args) -> None:
    from .bench import run_bench

    if args.fastai:
        import json

        from .bench import BENCH_DIR
        from .competition import load_competition
        from .config import load_config
        from .fastai_compare import compare
        from .layout import prepare

        comp = load_competition("digits-demo")
        prepare(comp)
        result = compare(comp, load_config("configs/demo.yaml", args.overrides))
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        (BENCH_DIR / "fastai.json").write_text(json.dumps(result, indent=2))
        return
    models = [m for m in args.models.split(",") if m]
    run_bench(
        models, args.img_size, args.batch_size, args.images, args.batches, args.workers, compile_=args.compile
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = Parser(
        prog="kagglecv",
        description="Kaggle image competitions: prepare data, k-fold fine-tune a timm model, write a checked submission.",
        epilog="Typical flow: kagglecv data dogs-vs-cats && kagglecv train && kagglecv submit. "
        "Without --comp, train, lr-find, submit, report and inspect use the competition prepared last. "
        "`kagglecv <command> --help` explains each one.",
    )
    p.add_argument("--version", action="version", version=f"kagglecv {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    helptext = "show the competitions kagglecv knows (competitions/*.yaml) and which are prepared"
    s = sub.add_parser("list", help=helptext, description=helptext)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser(
        "data",
        help="fetch a competition's files into data/<comp>/raw and lay out class folders + folds",
        description="Fetch raw files (once), lay them out as train/<class>/, test/, folds.csv. "
        "Idempotent: a prepared competition is not redone unless --force.",
    )
    s.add_argument(
        "comp",
        nargs="?",
        help="competition slug: competitions/<slug>.yaml, or a new Kaggle slug (its YAML is drafted)",
    )
    s.add_argument("--force", action="store_true", help="fetch and lay out again even if already prepared")
    s.add_argument(
        "--draft",
        action="store_true",
        help="(re)draft competitions/<comp>.yaml from the Kaggle download, even if the name is close to a known one",
    )
    s.add_argument(
        "--src",
        default="",
        metavar="DIR",
        help="your own images: DIR/<class>/** (writes competitions/<comp>.yaml if there is none)",
    )
    s.set_defaults(func=cmd_data)

    helptext = (
        "what the prepared data holds: class counts, sizes, dropped files, near duplicates, contact sheet"
    )
    s = sub.add_parser("inspect", help=helptext, description=helptext)
    s.add_argument("--comp", default="", help="competition slug (default: the one prepared last)")
    s.add_argument(
        "--samples",
        type=_int_at_least(1),
        default=8,
        help="images per class on the contact sheet (default: 8)",
    )
    s.set_defaults(func=cmd_inspect)

    for name, func, helptext in (
        (
            "train",
            cmd_train,
            "k-fold fine-tune: LR range test (lr=auto), one model per fold, out-of-fold predictions",
        ),
        ("lr-find", cmd_lr_find, "run only the LR range test and save lr_find.png/json"),
    ):
        s = sub.add_parser(name, help=helptext, description=helptext)
        s.add_argument(
            "--comp", default="", help="competition slug (default: the one `make data` prepared last)"
        )
        s.add_argument(
            "--config",
            default="configs/default.yaml",
            help="training recipe YAML (default: %(default)s, a pretrained resnet50)",
        )
        s.add_argument(
            "overrides", nargs="*", metavar="key=value", help=CONFIG_HELP if name == "train" else LR_FIND_HELP
        )
        s.set_defaults(func=func)
        if name == "train":
            s.add_argument(
                "--resume",
                action="store_true",
                help="continue the latest unfinished run (or --run NAME) from its last completed epoch",
            )
            s.add_argument(
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
                "--folds",
                default="",
                help="train only these fold ids, e.g. 0,1 (others elsewhere; RESUME then gathers them). "
                "The recipe key train_folds=N (called folds=N in older YAMLs) trains the first N",
            )

    helptext = "predict the test set with a run's folds (+TTA), write and check the CSV, score it, upload it"
    s = sub.add_parser("submit", help=helptext, description=helptext)
    s.add_argument("--comp", default="", help="competition slug (default: the one prepared last)")
    s.add_argument("--run", default="", help="run id under runs/<comp>/ (default: the latest finished run)")
    s.add_argument(
        "--upload", action="store_true", help="also upload the file to Kaggle (logged in submissions/log.csv)"
    )
    s.add_argument(
        "--message", default="", help="words for the submission's description (run id and CV are added)"
    )
    s.set_defaults(func=cmd_submit)

    helptext = (
        "write runs/<comp>/<run>/report.html: LR plot, curves, confusion matrix, top losses, suspect labels"
    )
    s = sub.add_parser("report", help=helptext, description=helptext)
    s.add_argument(
        "run", nargs="?", help="run id under runs/<comp>/ or a run folder (default: the latest finished)"
    )
    s.add_argument("--comp", default="", help="competition slug (default: the one prepared last)")
    s.set_defaults(func=cmd_report)

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
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser(
        "demo", help="data -> train -> submit on the built-in digits-demo, offline, on the CPU"
    )
    s.add_argument(
        "--config", default="configs/demo.yaml", help="training recipe YAML (default: %(default)s)"
    )
    s.add_argument("overrides", nargs="*", metavar="key=value", help=CONFIG_HELP)
    s.set_defaults(func=cmd_demo)
    return p


INTERRUPTED = {
    "train": "`make train RESUME=1 RUN=<the run above>` continues it from its last finished epoch "
    "(a plain rerun starts a new run)",
    "data": "rerun the same `make data` command: a partial download resumes, and nothing unfinished is "
    "marked prepared",
}


def main(argv: list[str] | None = None) -> int:
    from rich.markup import escape

    args = build_parser().parse_args(argv)
    try:
        run_folder = args.command == "report" and args.run and Path(args.run).is_dir()
        if args.command != "bench" and not run_folder and not COMPETITIONS_DIR.is_dir():
            raise UserError(
                f"no {COMPETITIONS_DIR}/ folder in {Path.cwd()}: run kagglecv from your kagglecv checkout "
                "(the folder with the Makefile)"
            )
        args.func(args)
    except UserError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 2
    except OSError as e:  # a full, read-only or forbidden disk is the user's to fix: one line, no traceback
        line = disk_error(e)
        if line is None:
            raise
        console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        advice = INTERRUPTED.get(args.command, "rerun the command")
        console.print(f"[yellow]interrupted[/]: nothing half-written is marked complete; {escape(advice)}")
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
