"""The `kagglecv` command: what each sub-command does (its grammar is in parser.py).

kagglecv data -c digits-demo       # source -> raw/ -> class folders + folds.csv
kagglecv train --config configs/demo.yaml epochs=10
kagglecv submit                    # latest run of the competition prepared last
kagglecv report -r <run>           # runs/<comp>/<run>/report.html (default: the latest run)
kagglecv config                    # every recipe key: default, type, meaning
kagglecv demo                      # all three on the built-in digits, offline
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kagglecv.cli.parser import parse
from kagglecv.core.competition import COMPETITIONS_DIR
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import disk_error
from kagglecv.core.names import check_name


def _comp(slug: str | None):
    from kagglecv.core.competition import load_competition, resolve_slug

    return load_competition(resolve_slug(slug, say=console.print))


def cmd_list(args) -> None:
    from rich.table import Table

    from kagglecv.core.competition import COMPETITIONS_DIR, known_competitions, load_competition
    from kagglecv.prepare.layout import is_prepared

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
    from kagglecv.core.competition import load_competition
    from kagglecv.prepare.layout import prepare

    if not args.comp:
        raise UserError(
            "which competition? `make data COMP=<slug>` or `kagglecv data -c <slug>` (see `kagglecv list`)"
        )
    if args.src:  # your own folder of class folders: write competitions/<comp>.yaml for it first
        from pathlib import Path

        from kagglecv.prepare.sources.folder import write_competition

        write_competition(args.comp, Path(args.src))
    else:
        from kagglecv.core.competition import COMPETITIONS_DIR

        if args.draft or not (COMPETITIONS_DIR / f"{args.comp}.yaml").exists():
            from kagglecv.prepare.draft import (
                draft_competition,  # a Kaggle slug with no YAML yet: download, draft one
            )

            draft_competition(args.comp, allow_similar=args.draft)
    prepare(load_competition(args.comp), force=args.force)


def cmd_inspect(args) -> None:
    from kagglecv.prepare.inspect import inspect_data

    inspect_data(_comp(args.comp), samples=args.samples)


def _config(args):
    from kagglecv.core.config import load_config

    return load_config(args.config, args.overrides)


def _not_a_blend(slug: str, run: str) -> None:
    """RUN= of `make train` names a training run: an existing blend's folder is refused in one line."""
    from kagglecv.core.run_files import is_blend
    from kagglecv.core.runs import RUNS_DIR

    if is_blend(RUNS_DIR / slug / run):
        raise UserError(
            f"{run} is a blend (made by `make blend`), not a training run: pick another RUN= to train"
        )


def cmd_train(args) -> None:
    from kagglecv.train.run import train

    cfg = _config(args)  # config errors first: they are cheaper to fix than a missing dataset
    comp = _comp(args.comp)
    if args.run:
        check_name(args.run, "RUN")
        _not_a_blend(comp.slug, args.run)
    if args.gpus < 1:
        raise UserError(f"GPUS must be 1 or more, got {args.gpus}")
    fold_ids = _fold_list(args.folds)
    if args.gpus > 1 and args.parallel == "folds":
        from kagglecv.train.launch import parallel_folds

        done = parallel_folds(args, cfg, comp, fold_ids)
        if done is not None:
            _print_cv(done)
        return
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        from kagglecv.train.launch import relaunch

        relaunch(args, cfg, comp, fold_ids)
        return
    run_dir = None
    if args.run:
        from kagglecv.core.runs import RUNS_DIR

        run_dir = RUNS_DIR / comp.slug / args.run
        if args.resume and not run_dir.is_dir():
            raise UserError(f"no run '{args.run}' to resume in {RUNS_DIR / comp.slug}/")
    if args.resume and (args.overrides or args.config != "configs/default.yaml"):
        console.print(
            "[yellow]note:[/] a resumed run keeps the config it started with; CONFIG/ARGS are ignored"
        )
    run_dir = train(comp, cfg, run_dir=run_dir, fold_ids=fold_ids, resume=args.resume)
    from kagglecv.ml.dist import is_main

    if is_main() and (run_dir / "summary.json").exists():
        _print_cv(run_dir)
        from kagglecv.report.page import write_report

        write_report(run_dir, comp.data_dir, show_cv=False, look=False)  # the CV table was just printed


def _print_cv(run_dir) -> None:
    from kagglecv.report.page import (  # one CV table for the terminal, the report and `report`
        cv_table,
        load_run,
    )

    run = load_run(run_dir)
    console.print(cv_table(run))
    console.print(f"trained in {run.summary['seconds']:.0f} s on {run.summary['device']}")


def cmd_tune(args) -> None:
    from kagglecv.tune.study import parse_budget, run_tune

    if args.trials and not re.fullmatch(r"[0-9]+", args.trials):
        raise UserError(f"TRIALS must be a whole number, got {args.trials!r} (1 or more; empty for no limit)")
    if args.trials and int(args.trials) < 1:
        raise UserError(f"TRIALS must be 1 or more, got {args.trials!r} (empty for no limit)")
    run_tune(
        _comp(args.comp),
        args.config,
        args.overrides,
        trials=int(args.trials) if args.trials else None,
        budget=parse_budget(args.budget),
        storage=args.storage,
    )


def _fold_list(text: str) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(k) for k in text.replace(" ", "").split(",") if k != ""})
    except ValueError:
        raise UserError(f"FOLDS must be fold numbers separated by commas, e.g. 0,1 — got {text!r}") from None


def cmd_lr_find(args) -> None:
    from kagglecv.train.run import lr_find_command

    cfg = _config(args)
    lr_find_command(_comp(args.comp), cfg)


def cmd_submit(args) -> None:
    from kagglecv.compete.submit import submit

    if args.kernel:
        from kagglecv.ship.kernel_push import submit_kernel

        submit_kernel(_comp(args.comp), args.run or None, args.message or None)
        return
    submit(
        _comp(args.comp),
        args.run or None,
        upload=args.upload,
        message=args.message or None,
        tta=args.tta,
        again=args.again,
    )


def cmd_kernel(args) -> None:
    from kagglecv.ship.kernel import make_kernel

    make_kernel(_comp(args.comp), args.run or None, push=args.push, force=args.force)


def cmd_report(args) -> None:
    from pathlib import Path

    from kagglecv.core.runs import find_run, run_at
    from kagglecv.report.page import write_report

    run = args.run or ""
    look = True if args.look else None
    if "/" in run or os.sep in run:  # a run folder's path: no competition needed
        write_report(run_at(Path(run)), look=look)
        return

    comp = _comp(args.comp)
    write_report(find_run(comp.slug, run or None), comp.data_dir, look=look)


def cmd_demo(args) -> None:
    """data -> train -> submit on digits-demo, in one process (one import of torch, not three)."""
    import time

    from kagglecv.core.config import load_config

    t0 = time.time()
    cfg = load_config(args.config, args.overrides)  # a typo is reported before torch is imported
    from kagglecv.compete.submit import submit
    from kagglecv.core.competition import load_competition
    from kagglecv.prepare.layout import prepare
    from kagglecv.train.run import train

    comp = load_competition("digits-demo")
    prepare(comp)
    run_dir = train(comp, cfg)
    _print_cv(run_dir)
    result = submit(comp, run_dir.name)
    from kagglecv.report.page import write_report

    write_report(run_dir, comp.data_dir, show_cv=False, look=False)  # after submit: shows the test score
    console.print(
        f"[bold green]demo done[/] in {time.time() - t0:.0f} s: CV {result['cv_mean']:.4f}, "
        f"test {result.get('test_score', float('nan')):.4f} -> {result['file']}"
    )


def cmd_config(args) -> None:
    from kagglecv.cli.config_table import show_config

    show_config(args.config, args.overrides)


def cmd_bench(args) -> None:
    from kagglecv.bench.throughput import run_bench

    if args.fastai:
        from kagglecv.bench.vs_fastai import bench_fastai

        return bench_fastai(args.overrides)
    models = [m for m in args.models.split(",") if m]
    run_bench(
        models, args.img_size, args.batch_size, args.images, args.batches, args.workers, compile_=args.compile
    )


INTERRUPTED = {
    "train": "`make train RESUME=1 RUN=<the run above>` continues it from its last finished epoch "
    "(a plain rerun starts a new run)",
    "tune": "rerun the same `make tune`: the study keeps its finished trials and continues",
    "data": "rerun the same `make data` command: a partial download resumes, and nothing unfinished is "
    "marked prepared",
}


def cmd_runs(args) -> None:
    from kagglecv.compete.runs_table import show_runs

    show_runs(_comp(args.comp))


def cmd_blend(args) -> None:
    from kagglecv.compete.blend import blend_and_say

    blend_and_say(_comp(args.comp), args.runs or None)


def cmd_lb(args) -> None:
    from kagglecv.compete.lb import show_lb

    show_lb(_comp(args.comp))


def cmd_predict(args) -> None:
    from kagglecv.cli.make_words import img_paths
    from kagglecv.core.runs import find_run
    from kagglecv.predict.new_images import expand_inputs, predict_images

    images = [*args.images, *img_paths(args.img)]
    comp = _comp(args.comp)
    expand_inputs(images)  # a path that is not there is named first, before any run is looked for
    out = args.out or None  # a str: a trailing / names a folder to make, which Path() would drop
    predict_images(
        comp, find_run(comp.slug, args.run or None, blends=False), images, top_k=args.top_k, out=out
    )


def cmd_export(args) -> None:
    from kagglecv.core.runs import find_run
    from kagglecv.ship.export import export_run

    comp = _comp(args.comp)
    out = Path(args.out) if args.out else None
    export_run(comp, find_run(comp.slug, args.run or None, blends=False), out_dir=out, force=args.force)


COMMANDS = {
    "predict": cmd_predict,
    "export": cmd_export,
    "runs": cmd_runs,
    "blend": cmd_blend,
    "lb": cmd_lb,
    "list": cmd_list,
    "data": cmd_data,
    "inspect": cmd_inspect,
    "train": cmd_train,
    "tune": cmd_tune,
    "lr-find": cmd_lr_find,
    "submit": cmd_submit,
    "kernel": cmd_kernel,
    "report": cmd_report,
    "config": cmd_config,
    "bench": cmd_bench,
    "demo": cmd_demo,
}


def _check_first(args) -> None:
    """What can fail before any heavy import: the checkout, a COMP that is no plain name, and the
    recipe (a typo in it is found in milliseconds, before torch loads)."""
    if getattr(args, "comp", ""):
        check_name(args.comp, "COMP (a competition slug)")
    run_folder = args.command == "report" and args.run and Path(args.run).is_dir()
    if args.command not in ("bench", "config") and not run_folder and not COMPETITIONS_DIR.is_dir():
        raise UserError(
            f"no {COMPETITIONS_DIR}/ folder in {Path.cwd()}: run kagglecv from your kagglecv checkout "
            "(the folder with the Makefile)"
        )
    if args.command in ("train", "lr-find", "demo"):
        from kagglecv.core.config import load_config

        load_config(args.config, args.overrides)
    if args.command == "tune":
        from kagglecv.tune.study import load_tune_recipe, parse_budget

        load_tune_recipe(args.config, args.overrides)
        parse_budget(args.budget)


def main(argv: list[str] | None = None) -> int:
    from rich.markup import escape

    args = None
    try:
        args = parse(argv)  # UPLOAD=maybe is an error before anything runs
        _check_first(args)
        COMMANDS[args.command](args)
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
        advice = INTERRUPTED.get(getattr(args, "command", ""), "rerun the command")
        console.print(f"[yellow]interrupted[/]: nothing half-written is marked complete; {escape(advice)}")
        return 130
    return 0
