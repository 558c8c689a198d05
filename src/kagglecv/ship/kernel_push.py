"""A dry-run notebook to Kaggle and back, through the official client (kernel.py builds and checks it;
kernel_folder.py says where it lives and how its answer is compared).

    make kernel PUSH=1     # dataset created (or a new version), notebook pushed, its run followed
    make submit KERNEL=1   # the pushed notebook's version submitted to the code competition

The dataset goes first and the notebook is pushed only once Kaggle says the dataset is ready. The
run is polled until it ends; its output and log land in kernels/<comp>-<run>/output/, and how it
ended is one of: complete (with submission.csv), no submission.csv, an exception (the log's last
lines), a timeout, cancelled. push.json records the refs and the outcome; `make submit KERNEL=1`
submits only a version that completed with submission.csv, logged in submissions/log.csv as uploads are.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kagglecv.core.competition import Competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.prepare.sources.kaggle import competition_url, connect, explain, http_status, with_retries
from kagglecv.ship.kernel_folder import compare_submissions, kernel_dir

PUSH_RECORD = "push.json"
POLL_SECONDS = 15.0  # between status checks of a running notebook
DATASET_READY_S = 900  # how long Kaggle may take to process an uploaded dataset
QUEUE_S = 3600  # waiting allowed beyond the notebook limit (Kaggle queues runs)
DONE = {"COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"}
TIMEOUT_WORDS = ("timeout", "timed out", "time limit", "exceeded", "maximum run time")
LOG_TAIL = 15


def _refused(code: int, action: str, what: str, ref: str, api, e=None) -> UserError:
    if code == 401:
        return explain(e, action, None, api)
    user = api.config_values.get("username", "?")
    if code == 403:
        return UserError(
            f"Kaggle refused {action} (403): the {what} {ref} must belong to the account of your token "
            f"({user}; its id starts with the owner), and the competition's rules must be accepted"
        )
    return UserError(f"Kaggle has no {what} {ref} (404 while {action}): check its id in kernel-metadata.json")


def call(api, fn, action: str, what: str, ref: str, *, retry: bool = True):
    """`fn()` with retries on 5xx/network errors; 401/403/404 said for the dataset or notebook."""

    def once():
        import requests

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the client prints progress and warnings
                return fn()
        except requests.HTTPError as e:
            code = http_status(e)
            if code in (401, 403, 404):
                raise _refused(code, action, what, ref, api, e) from None
            raise
        except ValueError as e:  # kernels_status/output turn 401/403 into this
            if "Cannot access kernel" in str(e):
                raise _refused(403, action, what, ref, api) from None
            raise UserError(f"the kaggle client refused {action}: {e}") from None

    return with_retries(once, action, slug=None, api=api, delays=None if retry else ())


# --- dataset, then notebook --------------------------------------------------------------------------


def set_owner(out: Path, user: str) -> tuple[str, str]:
    """Both metadata files owned by `user` (the build may have guessed); returns (dataset, kernel) ids."""
    ds_path, nb_path = out / "dataset" / "dataset-metadata.json", out / "notebook" / "kernel-metadata.json"
    ds, nb = json.loads(ds_path.read_text()), json.loads(nb_path.read_text())
    ds["id"] = f"{user}/{ds['id'].split('/', 1)[1]}"
    nb["id"] = f"{user}/{nb['id'].split('/', 1)[1]}"
    nb["dataset_sources"] = [ds["id"]]
    for path, data in ((ds_path, ds), (nb_path, nb)):
        atomic_write(path, lambda p, data=data: p.write_text(json.dumps(data, indent=2)))
    return ds["id"], nb["id"]


def push_dataset(api, folder: Path, ref: str, run: str) -> None:
    import requests

    action = f"looking up the dataset {ref}"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exists = bool(api.dataset_status(ref))
    except requests.HTTPError as e:
        if http_status(e) != 404:
            raise _refused(http_status(e) or 0, action, "dataset", ref, api, e) from None
        exists = False
    verb = "new version of" if exists else "new dataset"
    console.print(f"uploading the {verb} {escape(ref)} ...")
    if exists:
        fn = lambda: api.dataset_create_version(str(folder), f"kagglecv run {run}", quiet=True)  # noqa: E731
    else:
        fn = lambda: api.dataset_create_new(str(folder), public=False, quiet=True)  # noqa: E731
    answer = call(api, fn, f"uploading the dataset {ref}", "dataset", ref)
    if getattr(answer, "error", None):
        raise UserError(f"Kaggle did not take the dataset {ref}: {answer.error}")
    t0 = time.time()
    while True:  # a notebook pushed before the files are processed would not see them
        status = call(api, lambda: api.dataset_status(ref), f"checking the dataset {ref}", "dataset", ref)
        if str(status).lower() == "ready":
            break
        if str(status).lower() == "failed" or time.time() - t0 > DATASET_READY_S:
            raise UserError(f"Kaggle did not get the dataset {ref} ready (status {status}); rerun later")
        time.sleep(POLL_SECONDS)
    console.print(f"[green]✓[/] dataset {escape(ref)} ready")


def push_notebook(api, folder: Path, ref: str) -> tuple[int | None, str]:
    answer = call(api, lambda: api.kernels_push(str(folder)), f"pushing the notebook {ref}", "notebook", ref)
    if getattr(answer, "error", None):
        raise UserError(f"Kaggle did not take the notebook {ref}: {answer.error}")
    invalid = [
        *(getattr(answer, "invalid_dataset_sources", None) or []),
        *(getattr(answer, "invalid_competition_sources", None) or []),
    ]
    if invalid:
        raise UserError(
            f"Kaggle took the notebook {ref} but not its inputs {invalid}: accept the competition's rules "
            "and check the dataset id in kernel-metadata.json"
        )
    version = getattr(answer, "version_number", None)
    console.print(
        f"[green]✓[/] notebook {escape(ref)} version {version} pushed: {getattr(answer, 'url', '')}"
    )
    return version, getattr(answer, "url", "") or ""


def follow(api, ref: str, limit_s: float) -> tuple[str, str]:
    """Poll the notebook's run until it ends (or `limit_s` passes): (status, Kaggle's failure message)."""
    t0 = time.time()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(
        *columns,
        console=console,
        transient=True,
        disable=bool(os.environ.get("KAGGLECV_NO_PROGRESS")) or not console.is_terminal,
    ) as p:
        task, last = p.add_task(f"{ref}: queued", total=None), ""
        while True:
            answer = call(
                api, lambda: api.kernels_status(ref), f"checking the notebook {ref}", "notebook", ref
            )
            status = getattr(answer.status, "name", str(answer.status))
            p.update(task, description=f"{ref}: {status.lower()}")
            if status != last:  # a line per change: logs and pipes see the run's course too
                p.console.print(f"{time.strftime('%H:%M:%S')} {escape(ref)}: {status.lower()}")
                last = status
            if status in DONE:
                return status, getattr(answer, "failure_message", None) or ""
            if time.time() - t0 > limit_s:
                return "TIMEOUT", f"still {status.lower()} after {(time.time() - t0) / 60:.0f} min"
            time.sleep(POLL_SECONDS)


def log_text(path: Path) -> str:
    """Kaggle's log is a JSON list of {stream_name, time, data}; plain text otherwise."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    try:
        return "".join(str(item.get("data", "")) for item in json.loads(text))
    except (ValueError, AttributeError, TypeError):
        return text


def outcome(status: str, failure: str, output: Path, log: str) -> tuple[str, str]:
    """(kind, what to tell) for how the run ended."""
    tail = "\n".join(log.strip().splitlines()[-LOG_TAIL:])
    if status == "TIMEOUT" or any(w in failure.lower() for w in TIMEOUT_WORDS):
        return (
            "timeout",
            f"the notebook ran out of time ({failure or status}); predict fewer TTA views or a smaller model",
        )
    if status.startswith("CANCEL"):
        return "cancelled", "the notebook's run was cancelled on Kaggle"
    if status == "ERROR":
        return (
            "error",
            f"the notebook failed on Kaggle ({failure or 'an exception'}); the log's last lines:\n{tail}",
        )
    if not (output / "submission.csv").exists():
        return (
            "no-submission",
            f"the notebook completed but wrote no submission.csv; the log's last lines:\n{tail}",
        )
    return "complete", "completed with submission.csv"


def push_kernel(comp: Competition, out: Path, record: dict) -> dict:
    """Dataset, notebook, the run followed to its end, output fetched; push.json written."""
    api = connect()
    user = api.config_values.get("username") or api.get_config_value("username")
    if not user:
        raise UserError(
            "Kaggle did not say which account your token belongs to: set KAGGLE_USERNAME (the datasets "
            "and notebooks are created under it)"
        )
    dataset_ref, kernel_ref = set_owner(out, user)
    push_dataset(api, out / "dataset", dataset_ref, record["run"])
    version, url = push_notebook(api, out / "notebook", kernel_ref)
    status, failure = follow(api, kernel_ref, comp.submission.notebook_minutes * 60 + QUEUE_S)
    output = out / "output"
    output.mkdir(exist_ok=True)
    if status != "TIMEOUT":
        call(api, lambda: api.kernels_output(kernel_ref, str(output), force=True, quiet=True),
             f"fetching the notebook's output {kernel_ref}", "notebook", kernel_ref)  # fmt: skip
    log = log_text(output / f"{kernel_ref.split('/')[1]}.log")
    kind, said = outcome(status, failure, output, log)
    push = {
        "competition": comp.source.get("competition", comp.slug),
        "run": record["run"],
        "cv_mean": record["cv_mean"],
        "dataset": dataset_ref,
        "kernel": kernel_ref,
        "version": version,
        "url": url,
        "status": kind,
        "kaggle_status": status,
        "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write(out / PUSH_RECORD, lambda p: p.write_text(json.dumps(push, indent=2)))
    if kind != "complete":
        raise UserError(f"{said}\n(output and log in {output}/; fix and rerun `make kernel PUSH=1`)")
    _compare_with_local(comp, output / "submission.csv", Path(record["file"]))
    console.print(
        f"[green]✓[/] {kernel_ref} v{version} {said}; submit it: make submit KERNEL=1 RUN={escape(record['run'])}"
    )
    return push


def _compare_with_local(comp: Competition, got: Path, want: Path) -> None:
    try:
        worst = compare_submissions(got, want, comp)
        console.print(f"Kaggle's submission.csv equals {want} (values within {worst:.1e})")
    except UserError as e:  # a GPU with mixed precision differs a little from the CPU here
        console.print(f"[yellow]note:[/] Kaggle's output and the local file differ: {escape(str(e))}")


# --- the code submission -------------------------------------------------------------------------------


def read_push(out: Path, run: str) -> dict:
    path = out / PUSH_RECORD
    if not path.exists():
        raise UserError(
            f"run {run} has no pushed notebook ({path} is missing): `make kernel PUSH=1 RUN={run}` first"
        )
    push = json.loads(path.read_text())
    if push.get("status") != "complete":
        raise UserError(
            f"the pushed notebook {push.get('kernel')} v{push.get('version')} ended {push.get('status')}, "
            f"without a submission: fix it and rerun `make kernel PUSH=1 RUN={run}`"
        )
    return push


def submit_kernel(comp: Competition, run: str | None, message: str | None = None) -> dict:
    """Submit the run's pushed notebook version to the code competition; logged like an upload."""
    from kagglecv.compete.upload import DONE as LOG_DONE
    from kagglecv.compete.upload import NOT_SENT, append_log, pending_row, settle
    from kagglecv.core.runs import find_run

    if comp.source_kind != "kaggle":
        raise UserError(f"{comp.slug} is not a Kaggle competition: there is no notebook to submit")
    run_dir = find_run(comp.slug, run, blends=False)
    push = read_push(kernel_dir(comp, run_dir), run_dir.name)
    api = connect()
    slug = push["competition"]
    file = f"{push['kernel']} v{push['version']} submission.csv"
    row = pending_row(comp, slug, file, run_dir.name, push["cv_mean"], message)
    description, token = row["message"], row["token"]
    append_log(row)

    def send():
        with contextlib.redirect_stdout(io.StringIO()):
            return api.competition_submit_code(
                "submission.csv",
                description,
                slug,
                kernel=push["kernel"],
                kernel_version=push["version"],
                quiet=True,
            )

    try:
        answer = with_retries(send, f"submitting {push['kernel']} to {slug}", slug=slug, api=api, delays=())
    except UserError as e:
        settle(token, "nothing was submitted", status=NOT_SENT, response=str(e)[:300])
        raise
    ref = int(getattr(answer, "ref", 0) or 0)
    settle(token, f"Kaggle took it as ref {ref}", status=LOG_DONE if ref else NOT_SENT, ref=ref,
            response=str(getattr(answer, "message", "")))  # fmt: skip
    if not ref:
        raise UserError(f"Kaggle did not accept the notebook submission: {getattr(answer, 'message', '')}")
    console.print(
        f"[green]✓[/] submitted {push['kernel']} v{push['version']} to {slug} (ref {ref}): {competition_url(slug)}/submissions"
    )
    return row
