"""What a tune study leaves behind: configs/tuned-<comp>.yaml (the best trial as a whole recipe) and
runs/<comp>/tune.html (history, learning curves, parameter importances, the best trials), both
rewritten after every `make tune` session, also an interrupted one. The recipe's first line names
the study and its score: another study replaces it only with a better score (else its best goes to
configs/tuned-<study>.yaml, and a line says so), and a file make tune did not write is never replaced."""

from __future__ import annotations

import html
import re
import shlex
from pathlib import Path

import yaml

from kagglecv.core.console import console
from kagglecv.core.figures import img_tag, new_figure, png
from kagglecv.core.files import atomic_write

CONFIGS_DIR = Path("configs")


def write_outputs(study, comp, base: dict, config: str, root: Path) -> dict:
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == states.COMPLETE]
    out = {
        "trials": len(trials),
        "complete": len(complete),
        "pruned": sum(t.state == states.PRUNED for t in trials),
        "failed": sum(t.state == states.FAIL for t in trials),
    }
    if not complete:
        console.print("[yellow]no trial has finished yet[/]: nothing to write; rerun `make tune` to continue")
        return out
    best = study.best_trial
    out.update(best_value=best.value, best_trial=best.number, best_params=best.params)
    path, kept = _recipe_path(comp, best.value, study.study_name)
    out["yaml"] = str(_write_recipe(best, comp, base, config, study.study_name, path))
    out["html"] = str(_write_page(study, complete, comp, root, path))
    console.print(
        f"[bold]best[/] trial {best.number}: {comp.metric} {best.value:.4f} "
        f"({out['complete']} finished, {out['pruned']} pruned, {out['failed']} failed) -> {out['yaml']}, {out['html']}"
    )
    if kept:
        out["kept"] = kept
        console.print(f"[yellow]note:[/] {kept}; this study's best -> {path}", soft_wrap=True)
    return out


# the first line of a tuned recipe: which study, and the score a later study must beat to replace it
HEAD = re.compile(r"# make tune, study (.+?): trial \d+, (\S+) (\S+) on its tune folds$")


def _recipe_path(comp, value: float, study_name: str) -> tuple[Path, str]:
    """configs/tuned-<comp>.yaml where it may take this study's best: not there yet, or written by
    make tune from this same study or with a worse score. Else configs/tuned-<study>.yaml, and why."""
    from kagglecv.core.metrics import HIGHER_IS_BETTER

    path = CONFIGS_DIR / f"tuned-{comp.slug}.yaml"
    try:
        m = HEAD.match(path.read_text().split("\n", 1)[0])
    except FileNotFoundError:
        return path, ""
    except (OSError, UnicodeDecodeError):
        m = None
    other = CONFIGS_DIR / f"tuned-{study_name}.yaml"
    if m is None:
        return other, f"{path} was not written by make tune: kept"
    study, metric, score = m.groups()
    if study == study_name:
        return path, ""  # a study's best only gets better
    try:
        old = float(score)
    except ValueError:
        return other, f"{path} holds no score to compare with: kept"
    if metric == comp.metric and (value > old if HIGHER_IS_BETTER[comp.metric] else value < old):
        return path, ""
    return other, f"{path} (study {study}: {metric} {score}) is not beaten by {value:.4f}: kept"


def _write_recipe(best, comp, base: dict, config: str, study_name: str, path: Path) -> Path:
    """The base recipe's train_folds (trials train fewer) with everything the best trial used."""
    cfg = dict(best.user_attrs["config"])
    cfg["train_folds"] = base.get("train_folds", cfg["train_folds"])
    head = (
        f"# make tune, study {study_name}: trial {best.number}, {comp.metric} {best.value:.4f} on its tune folds\n"
        f"# base recipe: {config or '(defaults)'}; tuned: "
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        + f"\n# train it: make train COMP={comp.slug} CONFIG={shlex.quote(str(path))}\n"
    )
    CONFIGS_DIR.mkdir(exist_ok=True)
    atomic_write(path, lambda p: p.write_text(head + yaml.safe_dump(cfg, sort_keys=False)))
    return path


def _fig_history(trials, direction_max: bool):
    fig = new_figure(7, 3.6)
    ax = fig.subplots()
    done = [t for t in trials if t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], color="C0", label="finished", zorder=3)
    pruned = [t for t in trials if t.value is None and t.intermediate_values]
    ax.scatter(
        [t.number for t in pruned],
        [list(t.intermediate_values.values())[-1] for t in pruned],
        color="0.6",
        marker="x",
        label="pruned (last score)",
    )
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        if best is None or (t.value > best if direction_max else t.value < best):
            best = t.value
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel="CV on the tune folds", title="history")
    ax.legend()
    return fig


def _fig_curves(trials):
    fig = new_figure(7, 3.6)
    ax = fig.subplots()
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        pruned = t.value is None
        ax.plot(
            range(len(steps)),
            [t.intermediate_values[s] for s in steps],
            color="0.7" if pruned else "C0",
            lw=1 if pruned else 1.5,
        )
    ax.set(
        xlabel="epoch (folds one after another)",
        ylabel="validation score",
        title="every trial's epochs (grey: pruned)",
    )
    return fig


def _fig_importance(study):
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():  # "too few trials": the page says so itself
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        return None, f"parameter importances need more finished trials ({type(e).__name__})"
    if not imp:
        return None, "no parameter varied between the finished trials"
    fig = new_figure(6, 0.5 + 0.45 * len(imp))
    ax = fig.subplots()
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="C2")
    ax.set(xlabel="importance (optuna.importance, sums to 1)", title="which parameters mattered")
    return fig, ""


def _best_table(complete, direction_max: bool, n: int = 10) -> str:
    ranked = sorted(complete, key=lambda t: t.value, reverse=direction_max)[:n]
    names = sorted({k for t in ranked for k in t.params})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["trial", "score", *names, "lr", "seconds"])
    rows = []
    for t in ranked:
        cells = [t.number, f"{t.value:.4f}"]
        cells += [_fmt(t.params.get(k, "")) for k in names]
        cells += [_fmt(t.user_attrs.get("lr", "")), f"{t.duration.total_seconds():.0f}" if t.duration else ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _write_page(study, complete, comp, root: Path, recipe: Path) -> Path:
    import optuna

    direction_max = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    imp_fig, imp_note = _fig_importance(study)
    parts = [
        f"<h1>{html.escape(comp.slug)}: tune study {html.escape(study.study_name)}</h1>",
        f"<p>{len(trials)} trials: {len(complete)} finished, "
        f"{sum(t.state.name == 'PRUNED' for t in trials)} pruned. Best: trial {study.best_trial.number}, "
        f"{html.escape(comp.metric)} {study.best_value:.4f} -> {html.escape(str(recipe))}</p>",
        img_tag(png(_fig_history(trials, direction_max)), "history"),
        img_tag(png(_fig_curves(trials)), "learning curves"),
        img_tag(png(imp_fig), "importances") if imp_fig is not None else f"<p>{html.escape(imp_note)}</p>",
        "<h2>best trials</h2>",
        _best_table(complete, direction_max),
    ]
    style = "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
    page = f"<!doctype html><meta charset=utf-8><title>tune {html.escape(comp.slug)}</title><style>{style}</style>"
    path = root / "tune.html"
    atomic_write(path, lambda p: p.write_text(page + "\n".join(parts)))
    return path
