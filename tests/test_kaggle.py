"""`kagglecv data <slug>` through the real kaggle client, against a fake Kaggle API on loopback:
the prepared shape of every shipped competition, and every way the download can go wrong."""

from __future__ import annotations

import io
import json
import os
import random
import re
import tarfile
import zipfile

import pandas as pd
import pytest

from helpers.cli import cli_text
from helpers.kaggle_fake import EXPECTED, FakeKaggle, competition_zip, use_fake_kaggle
from kagglecv.cli import main
from kagglecv.core.errors import UserError
from kagglecv.prepare.sources import kaggle as ksrc


def _not_done(workdir, slug: str) -> None:
    """Nothing that looks complete: no raw/, no prepared.json."""
    root = workdir / "data" / slug
    assert not (root / "raw").exists() and not (root / "prepared.json").exists()


@pytest.mark.parametrize("slug", sorted(EXPECTED))
def test_data_prepares_shipped_competition(fake, workdir, slug, capsys):
    assert main(["data", slug]) == 0, cli_text(capsys)
    root = workdir / "data" / slug
    info = json.loads((root / "prepared.json").read_text())
    classes, per_class, n_test = EXPECTED[slug]
    assert info["classes"] == sorted(classes)
    assert info["train_counts"] == {c: per_class for c in classes}
    assert info["n_test"] == n_test
    sample = pd.read_csv(root / "sample_submission.csv")
    assert len(sample) == n_test
    folds = pd.read_csv(root / "folds.csv")
    assert sorted(folds["fold"].unique()) == list(range(5))
    assert not (root / "download").exists()  # the zip is gone once unpacked
    assert not list((root / "raw").rglob("*.zip"))  # nested zips are unpacked (and removed)
    auth = {r["auth"] for r in fake.requests if r["method"] == "POST"}
    assert auth == {"basic:kaggle-user"}


def test_missing_credentials(workdir, monkeypatch, capsys):
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home", creds=False)
        assert main(["data", "dogs-vs-cats"]) == 2
    text = cli_text(capsys)
    assert "no Kaggle credentials found" in text and "https://www.kaggle.com/settings" in text
    assert "kaggle.json" in text and "KAGGLE_USERNAME" in text
    assert "Authentication required" not in text  # the client's own banner stays hidden
    _not_done(workdir, "dogs-vs-cats")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"username": "kaggle-user", "key": "kaggle-key"', "is not valid JSON"),
        ('{"username": "kaggle-user"}', "has no 'key'"),
        ('{"key": "kaggle-key"}', "has no 'username'"),
        ("[]", "is not a kaggle.json"),
        (b"\xff\xfe\x00binary", "is not valid JSON (not text at all)"),
    ],
)
def test_broken_kaggle_json_is_named(workdir, monkeypatch, capsys, content, expected):
    """The client silently ignores a kaggle.json it cannot use; we say what is wrong with it."""
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home", creds=False)
        kjson = workdir / "home" / ".kaggle" / "kaggle.json"
        kjson.write_bytes(content if isinstance(content, bytes) else content.encode())
        os.chmod(kjson, 0o600)
        assert main(["data", "dogs-vs-cats"]) == 2
    text = cli_text(capsys)
    assert f"error: ~/.kaggle/kaggle.json {expected}" in text, text
    assert "download a new token from https://www.kaggle.com/settings" in text
    assert "no Kaggle credentials found" not in text
    _not_done(workdir, "dogs-vs-cats")


def test_missing_credentials_name_the_usual_place(workdir, monkeypatch, capsys):
    """Without KAGGLE_CONFIG_DIR and ~/.kaggle/, kaggle 2.x on Linux reads ~/.config/kaggle/kaggle.json,
    but ~/.kaggle/kaggle.json is read first once it exists: that is the place to name."""
    from helpers.kaggle_fake import kaggle_api_class

    home = workdir / "home"
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, home, creds=False)
        monkeypatch.delenv("KAGGLE_CONFIG_DIR")
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        (home / ".kaggle").rmdir()
        # what the client computes at import in this situation
        monkeypatch.setattr(kaggle_api_class(), "config", str(home / ".config" / "kaggle" / "kaggle.json"))
        assert main(["data", "dogs-vs-cats"]) == 2
        text = cli_text(capsys)
        assert "save the downloaded kaggle.json as ~/.kaggle/kaggle.json (chmod 600)" in text, text
        assert ".config" not in text

        # a kaggle.json where the client does not look (~/.kaggle/ exists, so it reads that one)
        (home / ".kaggle").mkdir()
        monkeypatch.setattr(kaggle_api_class(), "config", str(home / ".kaggle" / "kaggle.json"))
        (home / ".config" / "kaggle").mkdir(parents=True)
        (home / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
        assert main(["data", "dogs-vs-cats"]) == 2
    text = cli_text(capsys)
    assert "found ~/.config/kaggle/kaggle.json, but the kaggle client reads ~/.kaggle/kaggle.json" in text
    _not_done(workdir, "dogs-vs-cats")


@pytest.mark.parametrize("token", ["/no/such/dir/access_token", "secret/part-of-a-token"])
def test_token_that_looks_like_a_missing_file_warns(workdir, monkeypatch, capsys, token):
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home", creds=False, token=token)
        assert main(["data", "dogs-vs-cats"]) == 2
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "KAGGLE_API_TOKEN looks like a file path" in x]
    assert "no such file exists" in line
    # a plain path is shown; anything that might be the token itself never is
    assert (token in out) == token.startswith("/")
    assert "no Kaggle credentials found" in " ".join(out.split())


def test_wrong_key_401_never_printed(workdir, monkeypatch, capsys):
    secret = "s3cret-key-value-0123"
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home", creds=("kaggle-user", secret))
        assert main(["data", "dogs-vs-cats"]) == 2
    text = cli_text(capsys)
    assert "Kaggle rejected your credentials (from KAGGLE_USERNAME/KAGGLE_KEY)" in text
    assert "401" in text and secret not in text
    _not_done(workdir, "dogs-vs-cats")


def test_readable_kaggle_json_warns(workdir, monkeypatch, capsys):
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home", creds="file")
        kjson = workdir / "home" / ".kaggle" / "kaggle.json"
        os.chmod(kjson, 0o644)
        assert main(["data", "dogs-vs-cats"]) == 0
    text = cli_text(capsys)
    assert f"{kjson} can be read by other users" in text and "chmod 600" in text
    assert server.key not in text


def test_rules_not_accepted_403(fake, workdir, capsys):
    fake.status["dog-breed-identification"] = 403
    assert main(["data", "dog-breed-identification"]) == 2
    text = cli_text(capsys)
    assert "https://www.kaggle.com/competitions/dog-breed-identification/rules" in text
    assert "Late Submission" in text
    _not_done(workdir, "dog-breed-identification")


def test_no_such_competition_404(fake, workdir, capsys):
    fake.competitions.pop("digit-recognizer")
    assert main(["data", "digit-recognizer"]) == 2
    assert "Kaggle has no competition 'digit-recognizer' (404" in cli_text(capsys)
    _not_done(workdir, "digit-recognizer")


def test_server_errors_are_retried(fake, workdir, capsys):
    fake.flaky["dogs-vs-cats"] = 2  # two 503s, then it works
    assert main(["data", "dogs-vs-cats"]) == 0
    text = cli_text(capsys)
    assert "retrying" in text and "prepared dogs-vs-cats" in text


def test_server_errors_give_up_clearly(fake, workdir, capsys):
    fake.status["dogs-vs-cats"] = 500
    assert main(["data", "dogs-vs-cats"]) == 2
    assert "Kaggle's servers failed 3 times while downloading dogs-vs-cats (HTTP 500)" in cli_text(capsys)
    _not_done(workdir, "dogs-vs-cats")


def test_force_that_cannot_download_keeps_the_preparation(fake, workdir, capsys):
    assert main(["data", "dogs-vs-cats"]) == 0, cli_text(capsys)
    root = workdir / "data" / "dogs-vs-cats"
    before = {str(p): p.stat().st_mtime_ns for p in [root / "prepared.json", *(root / "raw").rglob("*")]}
    fake.status["dogs-vs-cats"] = 500
    assert main(["data", "dogs-vs-cats", "--force"]) == 2
    text = cli_text(capsys)
    assert "Kaggle's servers failed" in text
    assert "(FORCE changed nothing: data/dogs-vs-cats/ still holds the previous preparation)" in text
    after = {str(p): p.stat().st_mtime_ns for p in [root / "prepared.json", *(root / "raw").rglob("*")]}
    assert after == before


def test_server_down(workdir, monkeypatch, capsys):
    monkeypatch.setattr(ksrc, "RETRY_DELAYS", (0.0,))
    server = FakeKaggle({}).start()
    use_fake_kaggle(monkeypatch, server, workdir / "home")
    server.stop()  # nothing listens on that port any more
    assert main(["data", "dogs-vs-cats"]) == 2
    assert "could not reach Kaggle while downloading dogs-vs-cats" in cli_text(capsys)


def test_download_cut_off_is_never_complete_then_resumes(fake, workdir, monkeypatch, capsys):
    from kaggle.api import kaggle_api_extended as kae

    monkeypatch.setattr(kae.time, "sleep", lambda s: None)  # the client's own retry backoff
    big = competition_zip("plant-seedlings-classification")
    fake.competitions["plant-seedlings-classification"] = big
    fake.truncate["plant-seedlings-classification"] = True  # every GET hangs up halfway
    assert main(["data", "plant-seedlings-classification"]) == 2
    text = cli_text(capsys)
    assert "the download was cut off" in text and "rerun" in text
    _not_done(workdir, "plant-seedlings-classification")
    partial = workdir / "data" / "plant-seedlings-classification" / "download"
    assert (partial / "plant-seedlings-classification.zip").stat().st_size < len(big)

    fake.truncate.clear()
    assert main(["data", "plant-seedlings-classification"]) == 0, cli_text(capsys)
    assert (workdir / "data" / "plant-seedlings-classification" / "prepared.json").exists()


def test_damaged_download_is_fetched_again(fake, workdir, capsys):
    """A zip of the right size that fails its checksums is downloaded once more, not unpacked."""
    slug = "digit-recognizer"
    target = workdir / "data" / slug / "download" / f"{slug}.zip"
    target.parent.mkdir(parents=True)
    good = competition_zip(slug)
    target.write_bytes(good[:100] + bytes(len(good) - 200) + good[-100:])  # same size, newer mtime
    assert main(["data", slug]) == 0, cli_text(capsys)
    assert json.loads((workdir / "data" / slug / "prepared.json").read_text())["n_train"] == 60


@pytest.mark.parametrize("bad", ["../evil.txt", "/etc/evil.txt", "train/../../evil.txt"])
def test_archive_with_unsafe_paths_is_refused(fake, workdir, capsys, bad):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("sample_submission.csv", "id,label\n1,0\n")
        z.writestr(bad, "gotcha")
    fake.competitions["dogs-vs-cats"] = buf.getvalue()
    assert main(["data", "dogs-vs-cats"]) == 2
    text = cli_text(capsys)
    assert "unsafe path" in text and "refusing to unpack" in text
    assert not list(workdir.parent.rglob("evil.txt")) and not (workdir / "data" / "evil.txt").exists()
    _not_done(workdir, "dogs-vs-cats")
    assert not (workdir / "data" / "dogs-vs-cats" / "raw.partial").exists()


def test_nested_unsafe_paths_refused(fake, workdir, capsys):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("../../../evil.txt", "gotcha")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("train.zip", inner.getvalue())
    fake.competitions["dogs-vs-cats"] = outer.getvalue()
    assert main(["data", "dogs-vs-cats"]) == 2
    assert "train.zip holds an unsafe path" in cli_text(capsys)
    assert not list(workdir.parent.rglob("evil.txt"))
    _not_done(workdir, "dogs-vs-cats")


def test_not_enough_space(fake, workdir, monkeypatch, capsys):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ksrc.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    assert main(["data", "dogs-vs-cats"]) == 2
    text = cli_text(capsys)
    assert re.search(r"unpacking dogs-vs-cats.zip needs [\d.]+ KB but \S+ has 1000 bytes free", text), text
    _not_done(workdir, "dogs-vs-cats")


def test_access_token_works(workdir, monkeypatch, capsys):
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home", creds=False, token=True)
        assert main(["data", "dogs-vs-cats"]) == 0, cli_text(capsys)
    assert {r["auth"] for r in server.requests if "Competition" in r["path"]} == {"bearer"}


def test_stale_token_beats_good_key_and_says_so(workdir, monkeypatch, capsys):
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home", token="expired-token")
        assert main(["data", "dogs-vs-cats"]) == 2
    text = cli_text(capsys)
    assert "(401)" in text and "KAGGLE_API_TOKEN" in text and "remove it if stale" in text
    assert "expired-token" not in text and server.key not in text


@pytest.mark.slow
def test_make_data_command_line(workdir, tmp_path):
    """The installed command as `make data` runs it, configured by env vars only (no patching)."""
    import subprocess
    import sys

    from helpers.kaggle_fake import client_env

    with FakeKaggle(
        {"histopathologic-cancer-detection": competition_zip("histopathologic-cancer-detection")}
    ) as server:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
        cmd = [sys.executable, "-m", "kagglecv", "data", "histopathologic-cancer-detection"]
        env = {**base, **client_env(server, tmp_path / "nohome", creds=False)}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
        assert "no Kaggle credentials found" in proc.stdout
        env = {**base, **client_env(server, tmp_path / "home")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads((workdir / "data" / "histopathologic-cancer-detection" / "prepared.json").read_text())
    assert info["train_counts"] == {"0": 6, "1": 6}


@pytest.mark.slow
def test_following_the_no_credentials_advice_works(workdir, tmp_path):
    """A fresh Linux home (no ~/.kaggle/, no KAGGLE_CONFIG_DIR): the message names
    ~/.kaggle/kaggle.json, and a kaggle.json saved exactly there is what the next run uses."""
    import subprocess
    import sys

    from helpers.kaggle_fake import client_env

    home = tmp_path / "fresh"
    with FakeKaggle({"dogs-vs-cats": competition_zip("dogs-vs-cats")}) as server:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k != "XDG_CONFIG_HOME"}
        env = {**base, **client_env(server, home, creds=False)}
        del env["KAGGLE_CONFIG_DIR"]
        (home / ".kaggle").rmdir()  # the client then reads ~/.config/kaggle/kaggle.json
        cmd = [sys.executable, "-m", "kagglecv", "data", "dogs-vs-cats"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "save the downloaded kaggle.json as ~/.kaggle/kaggle.json" in " ".join(proc.stdout.split())
        (home / ".kaggle").mkdir()
        kjson = home / ".kaggle" / "kaggle.json"
        kjson.write_text(json.dumps({"username": server.username, "key": server.key}))
        os.chmod(kjson, 0o600)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (workdir / "data" / "dogs-vs-cats" / "prepared.json").exists()


def test_verbose_client_never_prints_the_key(fake, workdir, monkeypatch, capsys):
    """VERBOSE=1 (read by kaggle at import) would print each request's Authorization header."""
    import base64

    from kaggle.api.kaggle_api_extended import KaggleApi

    monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--verbose"])
    assert main(["data", "dogs-vs-cats"]) == 0
    text = cli_text(capsys)
    assert base64.b64encode(b"kaggle-user:kaggle-key").decode() not in text and "Authorization" not in text


def test_nested_zips_land_where_a_person_expects(tmp_path):
    """train.zip with a top folder unpacks beside itself; test.zip with loose files into test/;
    labels.csv.zip gives labels.csv; macOS litter is skipped."""

    def zbytes(files: dict[str, str | bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return buf.getvalue()

    outer = tmp_path / "comp.zip"
    outer.write_bytes(
        zbytes(
            {
                "train.zip": zbytes({"train/a.jpg": b"1", "__MACOSX/train/._a.jpg": b"x"}),
                "test.zip": zbytes({"1.jpg": b"2", "2.jpg": b"3"}),
                "labels.csv.zip": zbytes({"labels.csv": "id,label\n"}),
            }
        )
    )
    ksrc.extract_nested(outer, tmp_path / "raw")
    found = sorted(
        p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*") if p.is_file()
    )
    assert found == ["labels.csv", "test/1.jpg", "test/2.jpg", "train/a.jpg"]


def _tar(path, files: dict[str, bytes] | list[tuple[str, bytes]], link: str | None = None):
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items() if isinstance(files, dict) else files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(info)


def test_tar_and_7z_inside_the_zip_are_unpacked(tmp_path):
    """CIFAR-10 ships train.7z and test.7z inside its zip; others ship .tar.gz."""
    import py7zr

    inner = tmp_path / "src"
    inner.mkdir()
    with py7zr.SevenZipFile(inner / "train.7z", "w") as z:
        z.writestr(b"1", "train/1.png")
        z.writestr(b"2", "train/2.png")
    with py7zr.SevenZipFile(inner / "test.7z", "w") as z:  # loose files: into test/
        z.writestr(b"3", "1.png")
        z.writestr(b"4", "2.png")
    _tar(inner / "extra.tar.gz", {"extra/a.jpg": b"4"})
    _tar(inner / "more.tgz", {"./b.jpg": b"5", "./c.jpg": b"6"})  # as `tar czf more.tgz -C dir .` writes
    outer = tmp_path / "cifar-10.zip"
    with zipfile.ZipFile(outer, "w") as z:
        for p in inner.iterdir():
            z.write(p, p.name)
        z.writestr("trainLabels.csv", "id,label\n")
    ksrc.extract_nested(outer, tmp_path / "raw")
    found = sorted(
        p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*") if p.is_file()
    )
    assert found == [
        "extra/a.jpg",
        "more/b.jpg",
        "more/c.jpg",
        "test/1.png",
        "test/2.png",
        "train/1.png",
        "train/2.png",
        "trainLabels.csv",
    ]
    assert (tmp_path / "raw" / "train" / "2.png").read_bytes() == b"2"


@pytest.mark.parametrize("bad", ["unsafe", "link", "damaged", "damaged_tgz"])
def test_bad_tar_and_7z_are_refused_before_writing(tmp_path, bad):
    import py7zr

    archive = tmp_path / ("x.7z" if bad == "damaged" else "x.tar.gz")
    if bad == "unsafe":
        _tar(archive, {"ok.jpg": b"1", "../evil.jpg": b"2"})
    elif bad == "link":
        _tar(archive, {"ok.jpg": b"1"}, link="passwd")
    elif bad == "damaged_tgz":  # one flipped bit in the compressed data: only gzip's checksum tells
        _tar(archive, {"ok.jpg": bytes(range(256)) * 400})
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0x01
        archive.write_bytes(bytes(data))
    else:
        with py7zr.SevenZipFile(archive, "w") as z:
            z.writestr(b"1" * 5000, "a.png")
        archive.write_bytes(archive.read_bytes()[:-40])
    expected = {"unsafe": "unsafe path", "link": "holds a link"}.get(bad, "is damaged")
    with pytest.raises(ksrc.DamagedArchive if "damaged" in bad else UserError, match=expected):
        ksrc.extract_nested(archive, tmp_path / "raw")
    if "damaged" not in bad:  # refused before writing; a damaged one is fetched again from scratch
        assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").rglob("*.jpg"))


def _zip(path, files: list[tuple[str, bytes]], compress=zipfile.ZIP_STORED):
    import warnings

    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compress) as z:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, and writes it anyway
        for name, data in files:
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "7z", "nested", "file_and_folder"])
def test_duplicate_member_is_refused_not_overwritten(tmp_path, fmt):
    archive = tmp_path / f"x.{fmt if fmt in ('tar.gz', '7z') else 'zip'}"
    twice = [("train/a.jpg", b"first"), ("train/b.jpg", b"b"), ("train/a.jpg", b"second")]
    if fmt == "zip":
        _zip(archive, twice)
    elif fmt == "tar.gz":
        _tar(archive, twice)
    elif fmt == "7z":
        import py7zr

        with py7zr.SevenZipFile(archive, "w") as z:
            for name, data in twice:
                z.writestr(data, name)
    elif fmt == "nested":  # train.zip unpacks beside itself, over the outer archive's train/a.jpg
        _zip(
            archive,
            [("train/a.jpg", b"first"), ("train.zip", _zip(tmp_path / "i.zip", twice[2:]).read_bytes())],
        )
    else:
        _zip(archive, [("train", b"a file"), ("train/a.jpg", b"an image in a folder of that name")])
    expected = "as a file and as a folder" if fmt == "file_and_folder" else "holds 'train/a.jpg' twice"
    with pytest.raises(UserError, match=expected):
        ksrc.extract_nested(archive, tmp_path / "raw")
    if fmt != "nested":  # refused before writing
        assert not (tmp_path / "raw").exists()
    else:
        assert (tmp_path / "raw" / "train" / "a.jpg").read_bytes() == b"first"


@pytest.mark.parametrize("cap", ["members", "total", "ratio", "depth"])
def test_archive_bomb_caps(tmp_path, monkeypatch, cap):
    from kagglecv.prepare.sources import archives

    archive = tmp_path / "bomb.zip"
    if cap == "depth":  # a.zip in b.zip in bomb.zip: two levels below the download, over a cap of 1
        monkeypatch.setattr(archives, "MAX_DEPTH", 1)
        a = _zip(tmp_path / "a.zip", [("x.csv", b"1")]).read_bytes()
        b = _zip(tmp_path / "b.zip", [("a.zip", a)]).read_bytes()
        _zip(archive, [("b.zip", b)])
        expected = r"a.zip is an archive nested 2 deep in bomb.zip; the cap is 1"
    elif cap == "members":  # counted over the download: 2 files outside + 2 inside
        monkeypatch.setattr(archives, "MAX_MEMBERS", 3)
        inner = _zip(tmp_path / "in.zip", [("c", b"3"), ("d", b"4")]).read_bytes()
        _zip(archive, [("a", b"1"), ("in.zip", inner)])
        expected = r"in.zip looks like an archive bomb.*\(4 files, over the cap of 3\)"
    elif cap == "total":
        monkeypatch.setattr(archives, "MAX_TOTAL", 3000)
        _zip(archive, [("a", b"x" * 2000), ("b", b"y" * 2000)])
        expected = r"bomb.zip looks like an archive bomb.*unpacks to 3.9 KB, over the cap of 2.9 KB"
    else:  # 1 MB of zeros deflates to ~1 KB
        monkeypatch.setattr(archives, "RATIO_FLOOR", 100_000)
        _zip(archive, [("zeros.bin", bytes(1 << 20))], zipfile.ZIP_DEFLATED)
        expected = (
            r"bomb.zip looks like an archive bomb.*KB unpacks to 1.0 MB, \d+x; the cap is 200x above 97.7 KB"
        )
    with pytest.raises(UserError, match=expected):
        ksrc.extract_nested(archive, tmp_path / "raw")
    if cap in ("total", "ratio"):  # refused before writing
        assert not (tmp_path / "raw").exists()


def test_nested_archive_bomb_is_counted_from_the_download(tmp_path, monkeypatch):
    """A zip in a zip in a zip, each level well under the 200x cap alone, multiplies past it: 1.3 KB
    would unpack to 6.6 MB. The cap counts everything unpacked against the download's own bytes."""
    from kagglecv.prepare.sources import archives

    monkeypatch.setattr(archives, "RATIO_FLOOR", 1 << 20)  # the test's bomb is small; the cap is not
    leaf = bytes(random.Random(0).randrange(256) for _ in range(64)) * 64  # 4 KB, deflates ~20x
    c = _zip(tmp_path / "c.zip", [(f"{i}.bin", leaf) for i in range(40)], zipfile.ZIP_DEFLATED)
    b = _zip(tmp_path / "b.zip", [(f"c{i}.zip", c.read_bytes()) for i in range(40)], zipfile.ZIP_DEFLATED)
    a = _zip(tmp_path / "a.zip", [("b.zip", b.read_bytes())], zipfile.ZIP_DEFLATED)
    for level in (a, b, c):  # each level under the cap on its own
        with zipfile.ZipFile(level) as z:
            assert sum(i.file_size for i in z.infolist()) / level.stat().st_size < archives.MAX_RATIO / 5
    with pytest.raises(
        UserError, match=r"c\d+\.zip looks like an archive bomb.*KB download and the archives inside it would"
    ):
        ksrc.extract_nested(a, tmp_path / "raw")
    written = sum(p.stat().st_size for p in (tmp_path / "raw").rglob("*") if p.is_file())
    assert written < (1 << 20)  # stopped before the level that would pass the cap was written
