"""The `kagglecv` command: one sub-command per stage.

kagglecv data digits-demo          # source -> raw/ -> class folders + folds.csv
kagglecv train --config configs/demo.yaml epochs=10
kagglecv submit                    # latest run of the competition prepared last
kagglecv demo                      # all three on the built-in digits, offline
"""

from __future__ import annotations

import argparse
import os
import sys

from .console import console
from .errors import UserError

CONFIG_HELP = "training recipe YAML (configs/default.yaml); then key=value overrides, e.g. epochs=3 lr=auto model=resnet18"


def _comp(slug: str | None):
    from .competition import load_competition, resolve_slug

    return load_competition(resolve_slug(slug, say=console.print))


def cmd_list(args) -> None:
    from rich.table import Table

    from .competition import COMPETITIONS_DIR, known_competitions, load_competition
    from .layout import is_prepared

    table = Table(title=f"competitions in {COMPETITIONS_DIR}/")
    for col in ("slug", "source", "metric", "submission", "prepared"):
        table.add_column(col)
    for slug in known_competitions():
        c = load_competition(slug)
        table.add_row(slug, c.source_kind, c.metric, f"{c.submission.kind}", "✓" if is_prepared(c) else "")
    console.print(table)


def cmd_data(args) -> None:
    from .competition import load_competition
    from .layout import prepare

    if not args.comp:
        raise UserError("which competition? `make data COMP=<slug>` (see `kagglecv list`)")
    prepare(load_competition(args.comp), force=args.force)


def _config(args):
    from .config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args) -> None:
    from .train import train

    cfg = _config(args)  # config errors first: they are cheaper to fix than a missing dataset
    train(_comp(args.comp), cfg)


def cmd_lr_find(args) -> None:
    from .train import lr_find_only

    cfg = _config(args)
    lr_find_only(_comp(args.comp), cfg)


def cmd_submit(args) -> None:
    from .submit import submit

    submit(_comp(args.comp), args.run or None)


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
    result = submit(comp, run_dir.name)
    console.print(
        f"[bold green]demo done[/] in {time.time() - t0:.0f} s: CV {result['cv_mean']:.4f}, "
        f"test {result.get('test_score', float('nan')):.4f} -> {result['file']}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kagglecv",
        description="Kaggle image competitions: prepare data, k-fold fine-tune a timm model, write a checked submission.",
        epilog="Typical flow: kagglecv data dogs-vs-cats && kagglecv train && kagglecv submit. "
        "Without --comp, train/submit use the competition prepared last.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    s = sub.add_parser("list", help="show the competitions kagglecv knows (competitions/*.yaml)")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser(
        "data",
        help="fetch a competition's files into data/<comp>/raw and lay out class folders + folds",
        description="Fetch raw files (once), lay them out as train/<class>/, test/, folds.csv. "
        "Idempotent: a prepared competition is not redone unless --force.",
    )
    s.add_argument("comp", nargs="?", help="competition slug (a file competitions/<slug>.yaml)")
    s.add_argument("--force", action="store_true", help="fetch and lay out again even if already prepared")
    s.set_defaults(func=cmd_data)

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
        s.add_argument("--config", default="configs/default.yaml", help="training recipe YAML")
        s.add_argument("overrides", nargs="*", metavar="key=value", help=CONFIG_HELP)
        s.set_defaults(func=func)

    s = sub.add_parser(
        "submit", help="predict the test set with a run's folds (+TTA), write and check the CSV, score it"
    )
    s.add_argument("--comp", default="", help="competition slug (default: the one prepared last)")
    s.add_argument("--run", default="", help="run id under runs/<comp>/ (default: the latest finished run)")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser(
        "demo", help="data -> train -> submit on the built-in digits-demo, offline, on the CPU"
    )
    s.add_argument("--config", default="configs/demo.yaml", help="training recipe YAML")
    s.add_argument("overrides", nargs="*", metavar="key=value", help=CONFIG_HELP)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: nothing half-written is marked complete; rerun to continue")
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
