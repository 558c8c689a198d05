"""A tiny fake Kaggle API server, for testing against the *real* ``kaggle`` client.

Why: mocking the official client (kaggle 2.x / kagglesdk) would only test our guesses
about it. Here the real client talks HTTP to this stdlib server on 127.0.0.1, so its
redirects, auth headers, streaming, size checks and error mapping all run for real.
Only what kaggle 2.2.5 calls for ``authenticate``, ``competition_download_files``,
``competition_download_file`` and ``competition_submit`` is served:

* ``POST /api/v1/competitions.CompetitionApiService/<Rpc>``, JSON in and out, auth by
  HTTP Basic (username:key) or ``Bearer <token>``. ``DownloadDataFiles`` and
  ``DownloadDataFile`` answer 302 to a "signed" blob URL (the client names the local
  file ``<slug>.<extension of the URL>``, so the whole-competition blob ends in .zip).
* ``GET /blob/...``: the bytes, with Content-Length, Last-Modified, Range/If-Range
  (no auth, like a GCS signed URL).
* ``StartSubmissionUpload`` -> ``{token, createUrl}``; ``PUT createUrl`` -> 200;
  ``CreateSubmission`` -> ``{message, ref}``; ``ListSubmissions`` -> ``{submissions}``.
* ``POST /api/v1/security.OAuthService/IntrospectToken`` (authenticate() calls it
  when an access token is configured).
Errors are JSON ``{"code": N, "message": ...}`` with HTTP status N, as Kaggle does.
Absolute request targets (``POST http://localhost/...``) are accepted too, so the fake
can act as the HTTP proxy of a subprocess configured by env vars only (client_env).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import io
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from helpers.kaggle_fake_kernels import KernelServices

RPC = "/api/v1/competitions.CompetitionApiService/"
INTROSPECT = "/api/v1/security.OAuthService/IntrospectToken"


def _err(code: int, message: str):
    return code, {"code": code, "message": message}, {}


class FakeKaggle(KernelServices):
    """Fake server (datasets, kernels and code submissions: kaggle_fake_kernels.py); ``competitions`` maps slug -> zip bytes (a mutable dict).

    Per-slug failure knobs are plain dicts, so tests may change them at any time:
      status   {slug: 401|403|404|500...}: every competition RPC for slug fails so.
      flaky    {slug: n}: the first n competition RPCs for slug fail with flaky_status.
      truncate {slug: True | n}: blob GETs (all, or the first n) announce the full
               Content-Length, send half the body, then hang up.
      lost_answers {slug: n}: the first n CreateSubmission calls record the submission,
               then answer 502 (the answer was lost on the way back).
    Unknown slugs get 404, missing/wrong credentials 401. Accepted credentials: Basic
    ``username:key`` and Bearer ``token`` (None refuses that scheme). Received traffic
    is kept in ``.requests`` (dicts: method, path, auth, headers) and ``.submissions``
    (dicts: slug, file_name, data, description, ref).
    """

    def __init__(
        self,
        competitions=None,
        *,
        username="kaggle-user",
        key="kaggle-key",
        token="kaggle-token",
        status=None,
        flaky=None,
        truncate=None,
        flaky_status=503,
        lost_answers=None,
        last_modified=1704067200.0,
    ):
        self.competitions = dict(competitions or {})
        self.username, self.key, self.token = username, key, token
        self.status, self.flaky, self.truncate = dict(status or {}), dict(flaky or {}), dict(truncate or {})
        self.flaky_status = flaky_status
        self.lost_answers = dict(lost_answers or {})
        self.last_modified = email.utils.formatdate(last_modified, usegmt=True)
        self.requests: list[dict] = []
        self.submissions: list[dict] = []
        self.public_scores: dict[int, str] = {}  # ref -> public LB score, once "scored"
        self._uploads: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._server = None
        self._init_kernels()

    def start(self) -> FakeKaggle:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)  # free random port
        self._server.daemon_threads = True
        self._server.fake = self
        # a short poll: shutdown() returns within 0.05 s instead of 0.5 s (the fake stops after every test)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _auth(self, header: str):
        """'basic:<user>' or 'bearer' when the header carries accepted creds, else None."""
        scheme, _, value = header.partition(" ")
        if scheme == "Bearer" and self.token is not None and value == self.token:
            return "bearer"
        if scheme == "Basic" and self.username is not None:
            try:
                user, _, key = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return None
            return f"basic:{user}" if (user, key) == (self.username, self.key) else None
        return None

    def _rpc(self, name: str, body: dict, auth):
        """One competition RPC -> (status, json payload or None, extra headers)."""
        slug = body.get("competitionName", "")
        if auth is None:
            return _err(401, "Unauthenticated")
        with self._lock:
            if self.flaky.get(slug, 0) > 0:
                self.flaky[slug] -= 1
                return _err(self.flaky_status, "Transient failure")
        if slug in self.status:
            return _err(self.status[slug], f"Simulated HTTP {self.status[slug]} for {slug}")
        if slug not in self.competitions:
            return _err(404, f"Competition '{slug}' not found")
        sig = "?X-Goog-Signature=fake"
        if name == "DownloadDataFiles":
            return 302, None, {"Location": f"{self.url}/blob/{quote(slug)}.zip{sig}"}
        if name == "DownloadDataFile":
            member = body.get("fileName", "")
            if self._member(slug, member) is None:
                return _err(404, f"File '{member}' not found")
            return 302, None, {"Location": f"{self.url}/blob/{quote(slug)}/files/{quote(member)}{sig}"}
        if name == "StartSubmissionUpload":
            with self._lock:
                token = f"upload-{len(self._uploads) + 1}"
                self._uploads[token] = {"slug": slug, "file_name": body.get("fileName", ""), "data": None}
            return 200, {"token": token, "createUrl": f"{self.url}/upload/{token}"}, {}
        if name == "CreateSubmission":
            upload = self._uploads.get(body.get("blobFileTokens", ""))
            if not upload or upload["data"] is None or upload["slug"] != slug:
                return _err(400, "Unknown or incomplete upload token")
            with self._lock:
                ref = len(self.submissions) + 1
                self.submissions.append(
                    {
                        "slug": slug,
                        "file_name": upload["file_name"],
                        "data": upload["data"],
                        "description": body.get("submissionDescription"),
                        "ref": ref,
                    }
                )
                if self.lost_answers.get(slug, 0) > 0:
                    self.lost_answers[slug] -= 1
                    return _err(502, "Bad Gateway")
            return 200, {"message": f"Successfully submitted to {slug}", "ref": ref}, {}
        if name == "CreateCodeSubmission":
            return self._code_submission(slug, body)
        if name == "ListSubmissions":  # newest first, as Kaggle sorts by date
            mine = [s for s in reversed(self.submissions) if s["slug"] == slug]
            rows = [
                {
                    "ref": s["ref"],
                    "description": s["description"],
                    "status": "COMPLETE" if s["ref"] in self.public_scores else "PENDING",
                    "publicScore": self.public_scores.get(s["ref"], ""),
                }
                for s in mine
            ]
            return 200, {"submissions": rows}, {}
        return _err(404, f"Unknown RPC {name}")

    def _member(self, slug: str, member: str):
        with zipfile.ZipFile(io.BytesIO(self.competitions[slug])) as z:
            return z.read(member) if member in z.namelist() else None

    def _blob(self, path: str):
        """(slug, bytes or None) for /blob/<slug>.zip or /blob/<slug>/files/<member>."""
        rest = unquote(path[len("/blob/") :])
        slug, _, member = rest.partition("/files/")
        if not member:
            slug = slug[: -len(".zip")]
        data = self.competitions.get(slug)
        return slug, (self._member(slug, member) if member and data else data)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection, which keeps truncation simple."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code, payload=None, headers=None, body=b"", truncate=False):
        if payload is not None:
            body, headers = (
                json.dumps(payload).encode(),
                {**(headers or {}), "Content-Type": "application/json"},
            )
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if truncate else body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while (n := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                data += self.rfile.read(n)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _record(self):
        fake, path = self.server.fake, urlsplit(self.path).path  # absolute-form via proxy
        auth = fake._auth(self.headers.get("Authorization", ""))
        with fake._lock:
            fake.requests.append(
                {"method": self.command, "path": path, "auth": auth, "headers": dict(self.headers)}
            )
        return fake, path, auth

    def do_POST(self):
        fake, path, auth = self._record()
        body = json.loads(self._read_body() or b"{}")
        if path == INTROSPECT:
            ok = fake.token is not None and body.get("token") == fake.token
            return self._send(200, {"active": True, "username": fake.username or "kaggle-user"} if ok else {})
        service = fake.service_for(path)
        if service:
            return self._send(*fake._service_rpc(*service, body, auth))
        if not path.startswith(RPC):
            return self._send(404, {"code": 404, "message": "Not found"})
        self._send(*fake._rpc(path[len(RPC) :], body, auth))

    def do_PUT(self):
        fake, path, _ = self._record()
        data = self._read_body()
        upload = fake._uploads.get(path.rsplit("/", 1)[-1]) if path.startswith("/upload/") else None
        if upload is None:
            return self._send(404, {"code": 404, "message": "Unknown upload"})
        upload["data"] = data
        self._send(200, {})

    def do_GET(self):
        fake, path, _ = self._record()
        if path.startswith("/kernel-output/"):
            data = fake.kernel_output_file(path)
            if data is None:
                return self._send(404, {"code": 404, "message": "No such output"})
            return self._send(200, headers={"Last-Modified": fake.last_modified}, body=data)
        slug, data = fake._blob(path) if path.startswith("/blob/") else (None, None)
        if data is None:
            return self._send(404, {"code": 404, "message": "No such blob"})
        code, start, total = 200, 0, len(data)
        headers = {
            "Last-Modified": fake.last_modified,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/zip",
        }
        rng = self.headers.get("Range", "")
        if (
            rng.startswith("bytes=")
            and self.headers.get("If-Range", fake.last_modified) == fake.last_modified
        ):
            start = int(rng[6:].split("-")[0] or 0)
            if start >= total:
                return self._send(416, headers={"Content-Range": f"bytes */{total}"})
            code, headers["Content-Range"] = 206, f"bytes {start}-{total - 1}/{total}"
        with fake._lock:
            cut = fake.truncate.get(slug)
            if type(cut) is int and cut > 0:
                fake.truncate[slug] = cut - 1 or None
        self.close_connection = True
        self._send(code, headers=headers, body=data[start:], truncate=bool(cut))


def client_env(fake: FakeKaggle, home, *, creds=True, token=False, proxy=True) -> dict:
    """Env vars for a *subprocess* running the real client against ``fake``.

    home: becomes HOME and holds .kaggle/ (isolates kaggle.json, access_token and the
      OAuth cache credentials.json from the developer's real ones).
    creds: True -> KAGGLE_USERNAME/KAGGLE_KEY of the fake; (user, key) -> those;
      "file" -> write <home>/.kaggle/kaggle.json instead; False -> none.
    token: True -> KAGGLE_API_TOKEN of the fake; a str -> that token.
    KAGGLE_API_ENVIRONMENT=LOCALHOST makes kaggle use http://localhost (read once, when
    kaggle is imported), and with ``proxy`` the fake is also the HTTP proxy, so that
    http://localhost:80 reaches it. Drop inherited KAGGLE_* variables yourself.
    """
    kdir = Path(home) / ".kaggle"
    kdir.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "KAGGLE_CONFIG_DIR": str(kdir), "KAGGLE_API_ENVIRONMENT": "LOCALHOST"}
    if creds == "file":
        (kdir / "kaggle.json").write_text(json.dumps({"username": fake.username, "key": fake.key}))
        os.chmod(kdir / "kaggle.json", 0o600)
    elif creds:
        env["KAGGLE_USERNAME"], env["KAGGLE_KEY"] = (
            creds if isinstance(creds, tuple) else (fake.username, fake.key)
        )
    if token:
        env["KAGGLE_API_TOKEN"] = token if isinstance(token, str) else fake.token
    if proxy:
        env.update(HTTP_PROXY=fake.url, http_proxy=fake.url, NO_PROXY="", no_proxy="")
    return env


def kaggle_api_class():
    """Import KaggleApi; `import kaggle` runs authenticate() and may print a banner."""
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def point_kaggle_client_at(url: str, monkeypatch) -> None:
    """Send every API call of the in-process kaggle client to ``url``.

    Changes exactly two attributes (restored by ``monkeypatch``):
    * ``kagglesdk.kaggle_env._env_to_endpoint[KaggleEnv.LOCAL]`` = url (was
      "http://localhost"). KaggleHttpClient.__init__ reads it on every API call; the
      request URL becomes ``{url}/api/v1/<Service>/<Rpc>``.
    * ``KaggleApi.args`` gains "--local": kaggle 2.2.5 picks LOCAL vs PROD from this
      class-level list, filled from KAGGLE_API_ENVIRONMENT once at import time.
    """
    import kagglesdk.kaggle_env as kenv  # does not import the kaggle package

    monkeypatch.setitem(kenv._env_to_endpoint, kenv.KaggleEnv.LOCAL, url.rstrip("/"))
    KaggleApi = kaggle_api_class()
    monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--local"])


def use_fake_kaggle(monkeypatch, fake: FakeKaggle, home, **client_env_kwargs) -> None:
    """In-process isolation in one call: drop KAGGLE_* env vars, set client_env(...,
    proxy=False), patch the endpoint table via point_kaggle_client_at, and point
    KaggleApi.config_dir/config (also fixed at import time) into ``home``."""
    for name in [n for n in os.environ if n.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    env = client_env(fake, home, proxy=False, **client_env_kwargs)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    point_kaggle_client_at(fake.url, monkeypatch)
    KaggleApi = kaggle_api_class()
    monkeypatch.setattr(KaggleApi, "config_dir", env["KAGGLE_CONFIG_DIR"])
    monkeypatch.setattr(KaggleApi, "config", os.path.join(env["KAGGLE_CONFIG_DIR"], "kaggle.json"))


# --- small archives with each shipped competition's exact file names and CSV columns ---------------


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _image(ext: str, seed: int, size: int = 32) -> bytes:
    """A small random colour image, encoded as ext (.jpg/.png/.tif)."""
    import cv2
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def _csv(header: list[str], rows: list[list]) -> bytes:
    return ("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n").encode()


def _hex(i: int) -> str:
    return f"{i * 2654435761 % 16**12:012x}"


PER_CLASS, N_TEST = 6, 5


def _dogs_vs_cats(test_dir: str, sample: str, sample_value) -> dict[str, bytes]:
    train = {
        f"train/{c}.{i}.jpg": _image(".jpg", k * 100 + i)
        for k, c in enumerate(("cat", "dog"))
        for i in range(PER_CLASS)
    }
    test = {f"{test_dir}/{i}.jpg": _image(".jpg", 900 + i) for i in range(1, N_TEST + 1)}
    return {
        "train.zip": _zip(train),
        f"{test_dir}.zip": _zip(test),
        sample: _csv(["id", "label"], [[i, sample_value] for i in range(1, N_TEST + 1)]),
    }


def _digit_recognizer() -> dict[str, bytes]:
    import numpy as np

    rng = np.random.default_rng(0)
    pixels = [f"pixel{i}" for i in range(784)]
    train = [[d, *rng.integers(0, 256, 784)] for d in range(10) for _ in range(PER_CLASS)]
    test = [list(rng.integers(0, 256, 784)) for _ in range(N_TEST)]
    return {
        "train.csv": _csv(["label", *pixels], train),
        "test.csv": _csv(pixels, test),
        "sample_submission.csv": _csv(["ImageId", "Label"], [[i, 0] for i in range(1, N_TEST + 1)]),
    }


BREEDS = ["affenpinscher", "afghan_hound", "yorkshire_terrier"]


def _dog_breed() -> dict[str, bytes]:
    ids = [(_hex(i), BREEDS[i % 3]) for i in range(3 * PER_CLASS)]
    test = [_hex(1000 + i) for i in range(N_TEST)]
    return {
        "labels.csv": _csv(["id", "breed"], ids),
        **{f"train/{i}.jpg": _image(".jpg", n) for n, (i, _) in enumerate(ids)},
        **{f"test/{i}.jpg": _image(".jpg", 500 + n) for n, i in enumerate(test)},
        "sample_submission.csv": _csv(["id", *BREEDS], [[i] + [1 / 3] * 3 for i in test]),
    }


SPECIES = ["Black-grass", "Common Chickweed", "Shepherds Purse"]


def _plant_seedlings() -> dict[str, bytes]:
    test = [f"{_hex(2000 + i)[:9]}.png" for i in range(N_TEST)]
    return {
        **{
            f"train/{s}/{_hex(k * 50 + i)[:9]}.png": _image(".png", k * 50 + i)
            for k, s in enumerate(SPECIES)
            for i in range(PER_CLASS)
        },
        **{f"test/{name}": _image(".png", 700 + n) for n, name in enumerate(test)},
        "sample_submission.csv": _csv(["file", "species"], [[name, "Sugar beet"] for name in test]),
    }


def _histopathologic() -> dict[str, bytes]:
    ids = [(_hex(3000 + i) * 3 + "abcd", i % 2) for i in range(2 * PER_CLASS)]
    test = [_hex(4000 + i) * 3 + "0123" for i in range(N_TEST)]
    return {
        "train_labels.csv": _csv(["id", "label"], ids),
        **{f"train/{i}.tif": _image(".tif", n) for n, (i, _) in enumerate(ids)},
        **{f"test/{i}.tif": _image(".tif", 600 + n) for n, i in enumerate(test)},
        "sample_submission.csv": _csv(["id", "label"], [[i, 0] for i in test]),
    }


def _aerial_cactus() -> dict[str, bytes]:
    ids = [(f"{_hex(5000 + i)}{_hex(i)}.jpg", i % 2) for i in range(2 * PER_CLASS)]
    test = [f"{_hex(6000 + i)}{_hex(i)}.jpg" for i in range(N_TEST)]
    return {
        "train.csv": _csv(["id", "has_cactus"], ids),
        "train.zip": _zip({f"train/{i}": _image(".jpg", n) for n, (i, _) in enumerate(ids)}),
        "test.zip": _zip({f"test/{i}": _image(".jpg", 800 + n) for n, i in enumerate(test)}),
        "sample_submission.csv": _csv(["id", "has_cactus"], [[i, 0.5] for i in test]),
    }


CASSAVA = ["0", "1", "2", "3", "4"]  # train.csv's label: the codes of label_num_to_disease_map.json
CASSAVA_NAMES = [
    "Cassava Bacterial Blight (CBB)",
    "Cassava Brown Streak Disease (CBSD)",
    "Cassava Green Mottle (CGM)",
    "Cassava Mosaic Disease (CMD)",
    "Healthy",
]


def _cassava() -> dict[str, bytes]:
    """train_images/<digits>.jpg + train.csv image_id,label (0-4), test_images/, the same images as
    TFRecords (which kagglecv ignores) and the code -> disease map."""
    ids = [(f"{1000015157 + 7919 * i}.jpg", i % 5) for i in range(5 * PER_CLASS)]
    test = [f"{2216849948 + 104729 * i}.jpg" for i in range(N_TEST)]
    names = dict(zip(CASSAVA, CASSAVA_NAMES, strict=True))
    return {
        "train.csv": _csv(["image_id", "label"], ids),
        **{f"train_images/{i}": _image(".jpg", 1100 + n) for n, (i, _) in enumerate(ids)},
        **{f"test_images/{i}": _image(".jpg", 1200 + n) for n, i in enumerate(test)},
        "train_tfrecords/ld_train00-15.tfrec": bytes(range(256)) * 4,
        "train_tfrecords/ld_train01-15.tfrec": bytes(range(255, -1, -1)) * 4,
        f"test_tfrecords/ld_test00-{N_TEST}.tfrec": bytes(range(128)) * 4,
        "label_num_to_disease_map.json": json.dumps(names, indent=4).encode(),
        "sample_submission.csv": _csv(["image_id", "label"], [[i, 4] for i in test]),
    }


PADDY = ["bacterial_leaf_blight", "blast", "normal"]  # 3 of its 10 classes


def _paddy() -> dict[str, bytes]:
    """train_images/<label>/<id>.jpg (train.csv image_id,label,variety,age repeats the folder),
    test_images/<id>.jpg; sample_submission.csv image_id,label with the label left empty."""
    rows = [(f"{100330 + 17 * i}.jpg", PADDY[i % 3], "ADT45", 45 + i % 30) for i in range(3 * PER_CLASS)]
    test = [f"{200001 + i}.jpg" for i in range(N_TEST)]
    return {
        "train.csv": _csv(["image_id", "label", "variety", "age"], rows),
        **{f"train_images/{label}/{i}": _image(".jpg", 1300 + n) for n, (i, label, _, _) in enumerate(rows)},
        **{f"test_images/{i}": _image(".jpg", 1400 + n) for n, i in enumerate(test)},
        "sample_submission.csv": _csv(["image_id", "label"], [[i, ""] for i in test]),
    }


# the patient of each of the 12 training images (target alternates 0, 1): 6 patients of 1 to 3 images
SIIM_PATIENTS = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5]


def _siim_isic() -> dict[str, bytes]:
    """jpeg/train, jpeg/test, the DICOM folders (.dcm, not read) and tfrecords/ as the real zip has."""
    names = [f"ISIC_{1000000 + 7919 * i % 9000000:07d}" for i in range(2 * PER_CLASS)]
    test = [f"ISIC_{5000000 + 104729 * i % 4000000:07d}" for i in range(N_TEST)]
    sites = ["head/neck", "upper extremity", "lower extremity", "torso", ""]
    rows = [
        [name, f"IP_{7000000 + 13 * p}", ("male", "female", "")[p % 3], 30 + 5 * p, sites[i % 5]]
        + (["melanoma", "malignant", 1] if i % 2 else ["nevus", "benign", 0])
        for i, (name, p) in enumerate(zip(names, SIIM_PATIENTS, strict=True))
    ]
    columns = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge"]
    test_rows = [[name, f"IP_{8000000 + i}", "female", 45, "torso"] for i, name in enumerate(test)]
    return {
        **{f"jpeg/train/{n}.jpg": _image(".jpg", 1100 + k) for k, n in enumerate(names)},
        **{f"jpeg/test/{n}.jpg": _image(".jpg", 1200 + k) for k, n in enumerate(test)},
        **{f"train/{n}.dcm": b"DICM" for n in names},
        **{f"test/{n}.dcm": b"DICM" for n in test},
        "tfrecords/train00-12.tfrec": b"tfrecord",
        "tfrecords/test00-5.tfrec": b"tfrecord",
        "train.csv": _csv([*columns, "diagnosis", "benign_malignant", "target"], rows),
        "test.csv": _csv(columns, test_rows),
        "sample_submission.csv": _csv(["image_name", "target"], [[n, 0] for n in test]),
    }


DISEASES = ["healthy", "multiple_diseases", "rust", "scab"]


def _plant_pathology_2020() -> dict[str, bytes]:
    """One images/ folder for both sets; train.csv one-hot; the sample's class columns in its order."""
    n_train = len(DISEASES) * PER_CLASS
    one_hot = [[f"Train_{i}"] + [int(i % 4 == k) for k in range(4)] for i in range(n_train)]
    return {
        **{f"images/Train_{i}.jpg": _image(".jpg", 1300 + i) for i in range(n_train)},
        **{f"images/Test_{i}.jpg": _image(".jpg", 1400 + i) for i in range(N_TEST)},
        "train.csv": _csv(["image_id", *DISEASES], one_hot),
        "test.csv": _csv(["image_id"], [[f"Test_{i}"] for i in range(N_TEST)]),
        "sample_submission.csv": _csv(
            ["image_id", *DISEASES], [[f"Test_{i}", 0.25, 0.25, 0.25, 0.25] for i in range(N_TEST)]
        ),
    }


ARCHIVES = {
    "dogs-vs-cats": lambda: _dogs_vs_cats("test1", "sampleSubmission.csv", 0),
    "dogs-vs-cats-redux-kernels-edition": lambda: _dogs_vs_cats("test", "sample_submission.csv", 0.5),
    "digit-recognizer": _digit_recognizer,
    "dog-breed-identification": _dog_breed,
    "plant-seedlings-classification": _plant_seedlings,
    "histopathologic-cancer-detection": _histopathologic,
    "aerial-cactus-identification": _aerial_cactus,
    "cassava-leaf-disease-classification": _cassava,
    "paddy-disease-classification": _paddy,
    "siim-isic-melanoma-classification": _siim_isic,
    "plant-pathology-2020-fgvc7": _plant_pathology_2020,
}
# slug -> (classes, train images per class, test images) that `make data` should produce
EXPECTED = {
    "dogs-vs-cats": (["cat", "dog"], PER_CLASS, N_TEST),
    "dogs-vs-cats-redux-kernels-edition": (["cat", "dog"], PER_CLASS, N_TEST),
    "digit-recognizer": ([str(d) for d in range(10)], PER_CLASS, N_TEST),
    "dog-breed-identification": (BREEDS, PER_CLASS, N_TEST),
    "plant-seedlings-classification": (SPECIES, PER_CLASS, N_TEST),
    "histopathologic-cancer-detection": (["0", "1"], PER_CLASS, N_TEST),
    "aerial-cactus-identification": (["0", "1"], PER_CLASS, N_TEST),
    "cassava-leaf-disease-classification": (CASSAVA, PER_CLASS, N_TEST),
    "paddy-disease-classification": (PADDY, PER_CLASS, N_TEST),
    "siim-isic-melanoma-classification": (["0", "1"], PER_CLASS, N_TEST),
    "plant-pathology-2020-fgvc7": (DISEASES, PER_CLASS, N_TEST),
}
_built: dict[str, bytes] = {}


def competition_zip(slug: str) -> bytes:
    """What Kaggle's 'download all' gives for slug, in miniature (built once per session)."""
    if slug not in _built:
        _built[slug] = _zip(ARCHIVES[slug]())
    return _built[slug]
