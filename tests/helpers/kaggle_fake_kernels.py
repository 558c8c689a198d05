"""The fake Kaggle's datasets, blobs and kernels services, and code submissions (kaggle_fake.py
mixes them into FakeKaggle), as kaggle 2.2.5 / kagglesdk call them:

* ``blobs.BlobApiService/StartBlobUpload`` -> ``{token, createUrl}``; the PUT to createUrl is the
  competitions' upload path (``/upload/<token>``), so the bytes land in ``fake._uploads``.
* ``datasets.DatasetApiService/GetDatasetStatus`` (404 when unknown, else the next of
  ``dataset_statuses``, default READY), ``CreateDataset`` and ``CreateDatasetVersion``: the files are
  the uploaded blobs' bytes, one dict per version, in ``fake.datasets[<owner>/<slug>]``.
* ``kernels.KernelsApiService/SaveKernel`` (a new version; dataset and competition sources checked),
  ``GetKernelSessionStatus`` (the next of the run's statuses) and ``ListKernelSessionOutput`` (files
  served from ``/kernel-output/<owner>/<slug>/<name>``, plus the log).
* ``competitions.CompetitionApiService/CreateCodeSubmission``: recorded in ``fake.submissions`` with
  the kernel's output submission.csv as its data, and in ``fake.code_submissions``.

Knobs (plain dicts, changeable at any time):
  service_status {"datasets"|"kernels"|"blobs" or "<service>/<Rpc>": code}: every RPC of that
      service (or that one RPC) answers so.
  kernel_runs {"<owner>/<slug>" or "*": {"statuses": [...], "failure": str, "files": {name: bytes
      or a Path, read when served}, "log": str}}: what a pushed notebook's run does (the last
      status repeats).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, unquote

SERVICES = {
    "/api/v1/datasets.DatasetApiService/": "datasets",
    "/api/v1/kernels.KernelsApiService/": "kernels",
    "/api/v1/blobs.BlobApiService/": "blobs",
}
DEFAULT_RUN = {"statuses": ["RUNNING", "COMPLETE"], "failure": "", "files": {}, "log": ""}


def _err(code: int, message: str):
    return code, {"code": code, "message": message}, {}


class KernelServices:
    """Mixed into FakeKaggle: state for datasets and kernels, and their RPCs."""

    def _init_kernels(self) -> None:
        self.datasets: dict[str, dict] = {}
        self.kernels: dict[str, dict] = {}
        self.code_submissions: list[dict] = []
        self.service_status: dict[str, int] = {}
        self.dataset_statuses: list[str] = ["READY"]
        self.kernel_runs: dict[str, dict] = {}
        self._polls: dict[str, int] = {}

    def service_for(self, path: str) -> tuple[str, str] | None:
        for prefix, service in SERVICES.items():
            if path.startswith(prefix):
                return service, path[len(prefix) :]
        return None

    def _service_rpc(self, service: str, name: str, body: dict, auth):
        if auth is None:
            return _err(401, "Unauthenticated")
        for key in (f"{service}/{name}", service):
            if key in self.service_status:
                code = self.service_status[key]
                return _err(code, f"Simulated HTTP {code} for {key}")
        handler = getattr(self, f"_{service}_{name}", None)
        if handler is None:
            return _err(404, f"Unknown RPC {service}/{name}")
        return handler(body, auth)

    def _owner_ok(self, owner: str, auth) -> bool:
        return auth == "bearer" or auth == f"basic:{owner}"

    # --- blobs and datasets ---------------------------------------------------------------------

    def _blobs_StartBlobUpload(self, body, auth):
        with self._lock:
            token = f"blob-{len(self._uploads) + 1}"
            self._uploads[token] = {"slug": None, "file_name": body.get("name", ""), "data": None}
        return 200, {"token": token, "createUrl": f"{self.url}/upload/{token}"}, {}

    def _files(self, listed: list) -> dict[str, bytes] | None:
        files = {}
        for item in listed or []:
            upload = self._uploads.get(item.get("token", ""))
            if upload is None or upload["data"] is None:
                return None
            files[upload["file_name"]] = upload["data"]
        return files

    def _datasets_GetDatasetStatus(self, body, auth):
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return _err(404, f"Dataset {ref} not found")
        status = self.dataset_statuses.pop(0) if len(self.dataset_statuses) > 1 else self.dataset_statuses[0]
        return 200, {"status": status}, {}

    def _datasets_CreateDataset(self, body, auth):
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        if not self._owner_ok(body.get("ownerSlug", ""), auth):
            return _err(403, f"You cannot create datasets for {body.get('ownerSlug')}")
        files = self._files(body.get("files"))
        if files is None:
            return _err(400, "Unknown or incomplete upload token")
        if ref in self.datasets:
            return 200, {"error": f"The requested slug {ref} is already in use"}, {}
        self.datasets[ref] = {
            "title": body.get("title"),
            "private": body.get("isPrivate"),
            "versions": [files],
        }
        return 200, {"ref": ref, "url": f"{self.url}/datasets/{ref}", "status": "ok"}, {}

    def _datasets_CreateDatasetVersion(self, body, auth):
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return _err(404, f"Dataset {ref} not found")
        files = self._files((body.get("body") or {}).get("files"))
        if files is None:
            return _err(400, "Unknown or incomplete upload token")
        self.datasets[ref]["versions"].append(files)
        return 200, {"ref": ref, "url": f"{self.url}/datasets/{ref}", "status": "ok"}, {}

    # --- kernels ------------------------------------------------------------------------------------

    def _kernels_SaveKernel(self, body, auth):
        ref = body.get("slug", "")
        owner = ref.split("/")[0]
        if not self._owner_ok(owner, auth):
            return _err(403, f"You cannot push notebooks for {owner}")
        answer = {
            "invalidDatasetSources": [
                d for d in body.get("datasetDataSources", []) if d not in self.datasets
            ],
            "invalidCompetitionSources": [
                c for c in body.get("competitionDataSources", []) if c not in self.competitions
            ],
        }
        kernel = self.kernels.setdefault(ref, {"versions": []})
        kernel["versions"].append(body)
        self._polls[ref] = 0
        version = len(kernel["versions"])
        return (
            200,
            {"ref": f"/code/{ref}", "url": f"{self.url}/code/{ref}", "versionNumber": version, **answer},
            {},
        )

    def _run_of(self, body) -> tuple[str, dict] | None:
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        if ref not in self.kernels:
            return None
        return ref, {**DEFAULT_RUN, **self.kernel_runs.get("*", {}), **self.kernel_runs.get(ref, {})}

    def _kernels_GetKernelSessionStatus(self, body, auth):
        found = self._run_of(body)
        if found is None:
            return _err(404, "Notebook not found")
        ref, run = found
        statuses = run["statuses"]
        status = statuses[min(self._polls.get(ref, 0), len(statuses) - 1)]
        self._polls[ref] = self._polls.get(ref, 0) + 1
        return 200, {"status": status, "failureMessage": run["failure"] if status == "ERROR" else ""}, {}

    def _kernels_ListKernelSessionOutput(self, body, auth):
        found = self._run_of(body)
        if found is None:
            return _err(404, "Notebook not found")
        ref, run = found
        files = [
            {"url": f"{self.url}/kernel-output/{quote(ref)}/{quote(name)}", "fileName": name}
            for name in run["files"]
        ]
        return 200, {"files": files, "log": run["log"]}, {}

    def kernel_output_file(self, path: str) -> bytes | None:
        """The bytes behind a /kernel-output/<owner>/<slug>/<name> URL."""
        owner, slug, name = unquote(path[len("/kernel-output/") :]).split("/", 2)
        run = {**DEFAULT_RUN, **self.kernel_runs.get("*", {}), **self.kernel_runs.get(f"{owner}/{slug}", {})}
        return _data(run["files"].get(name))

    # --- code submissions -------------------------------------------------------------------------

    def _code_submission(self, slug: str, body: dict):
        ref = f"{body.get('kernelOwner')}/{body.get('kernelSlug')}"
        kernel = self.kernels.get(ref)
        version = body.get("kernelVersion")
        if kernel is None or (version and not 1 <= int(version) <= len(kernel["versions"])):
            return _err(404, f"Notebook {ref} version {version} not found")
        run = {**DEFAULT_RUN, **self.kernel_runs.get("*", {}), **self.kernel_runs.get(ref, {})}
        data = _data(run["files"].get(body.get("fileName", "")))
        if data is None:
            return _err(400, f"The notebook has no output file {body.get('fileName')}")
        with self._lock:
            ref_no = len(self.submissions) + 1
            entry = {
                "slug": slug,
                "file_name": body.get("fileName"),
                "data": data,
                "description": body.get("submissionDescription"),
                "ref": ref_no,
                "kernel": ref,
                "version": version,
            }
            self.submissions.append(entry)
            self.code_submissions.append(entry)
        return 200, {"message": f"Successfully submitted {ref} to {slug}", "ref": ref_no}, {}


def _data(value) -> bytes | None:
    return value.read_bytes() if isinstance(value, Path) else value


def dumps_log(lines: list[str]) -> str:
    """A log as Kaggle serves it: a JSON list of {stream_name, time, data}."""
    return json.dumps(
        [{"stream_name": "stdout", "time": i * 0.1, "data": line + "\n"} for i, line in enumerate(lines)]
    )
