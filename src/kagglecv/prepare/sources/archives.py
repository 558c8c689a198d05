"""Unpack competition archives safely: zip, tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) and 7z.

Kaggle serves a competition as one zip, and inside it often more archives: dogs-vs-cats ships
train.zip, CIFAR-10 ships train.7z, others .tar.gz. Every archive is checked before anything is
written: no absolute or `..` paths, no links, no name twice, enough free disk, and caps that keep a
zip bomb out (nesting depth, member count, unpacked size, and its ratio to the archive's size and
to the download's: all archives of one download together, so nesting cannot multiply past a cap).
Then it is unpacked, and the archives found inside are unpacked in place too.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kagglecv.core.console import console, track
from kagglecv.core.errors import UserError
from kagglecv.core.files import human_bytes

SPACE_MARGIN = 1.1  # unpacking needs the archive's uncompressed size plus 10%
# Caps against archive bombs, far above any real competition (the largest ship ~1.5 M files, ~1 TB):
MAX_DEPTH = 3  # archives inside archives inside the download
MAX_MEMBERS = 5_000_000  # files, all archives of one download together
MAX_TOTAL = 2 * 1024**4  # unpacked bytes, all archives of one download together
MAX_RATIO = 200  # unpacked size / archive size: images barely compress, a bomb compresses ~1000x
RATIO_FLOOR = 1 << 30  # ... checked above this unpacked size only (a small CSV may compress 200x)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class DamagedArchive(UserError):
    """The archive does not open or fails its checksums: a bad download, to be fetched again."""


@dataclass
class Budget:
    """What the archives of one download have unpacked so far, against the caps. `packed` is the
    download's own size: the ratio cap also holds for everything unpacked from it together, so
    archives nested in archives, each under the cap alone, cannot multiply their way past it."""

    packed: int
    members: int = 0
    size: int = 0


@dataclass
class Member:
    name: str
    size: int
    is_dir: bool
    is_link: bool
    handle: object  # the format's own entry (ZipInfo, TarInfo, or the 7z name)


def kind(path: Path) -> str | None:
    """zip, tar or 7z by the file name; None for anything else."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".7z"):
        return "7z"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def stem(path: Path) -> str:
    """train.tar.gz -> train, test.7z -> test."""
    name = path.name
    for suffix in sorted(TAR_SUFFIXES + (".zip", ".7z"), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _members(archive: Path, opened) -> list[Member]:
    k = kind(archive)
    if k == "zip":
        return [
            Member(i.filename, i.file_size, i.is_dir(), stat.S_ISLNK(i.external_attr >> 16), i)
            for i in opened.infolist()
        ]
    if k == "tar":
        special = [
            i.name for i in opened.getmembers() if not (i.isfile() or i.isdir() or i.issym() or i.islnk())
        ]
        if special:  # FIFOs and devices: no competition ships them, and writing them is unsafe
            raise UserError(f"{archive.name} holds a special file {special[0]!r}; refusing to unpack it")
        return [Member(i.name, i.size, i.isdir(), i.issym() or i.islnk(), i) for i in opened.getmembers()]
    return [
        Member(
            i.filename, i.uncompressed or 0, i.is_directory, bool(getattr(i, "is_symlink", False)), i.filename
        )
        for i in opened.list()
    ]


def _open(archive: Path):
    k = kind(archive)
    if k == "zip":
        return zipfile.ZipFile(archive)
    if k == "tar":
        return tarfile.open(archive, "r:*")
    try:
        import py7zr
    except ImportError:
        raise UserError(
            f"{archive.name} is a 7z archive and py7zr is not installed: `pip install py7zr` and rerun"
        ) from None
    return py7zr.SevenZipFile(archive, "r")


def _damage_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (
        zipfile.BadZipFile,
        gzip.BadGzipFile,
        tarfile.TarError,
        zlib.error,
        lzma.LZMAError,
        EOFError,
    )
    try:
        import py7zr

        errors += (py7zr.exceptions.ArchiveError,)  # Bad7zFile, CrcError, DecompressionError, ...
    except ImportError:
        pass
    return errors


def _member_path(name: str, archive: Path) -> PurePosixPath:
    """The member's relative path, or a UserError for absolute paths and `..` (zip slip)."""
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in path.parts:
        raise UserError(
            f"{archive.name} holds an unsafe path {name!r} (absolute or with '..'); refusing to "
            "unpack it. Nothing was extracted."
        )
    return path


def _check_unique(archive: Path, members: list[Member], paths: list[PurePosixPath], dest: Path) -> None:
    """No file named twice (one would silently replace the other), none that is also a folder,
    and none over a file an earlier archive of the download unpacked."""
    files: set[str] = set()
    dirs: set[str] = set()
    look = dest.is_dir() and any(dest.iterdir())  # a fresh folder holds nothing to clash with
    for m, path in zip(members, paths, strict=True):
        key = "/".join(p for p in path.parts if p != ".")
        if m.is_dir:
            dirs.add(key)
            continue
        if key in files or key in dirs or (look and dest.joinpath(*path.parts).exists()):
            raise UserError(
                f"{archive.name} holds {m.name!r} twice (or over a file already unpacked); refusing to "
                "unpack it, as one copy would silently replace the other"
            )
        files.add(key)
        dirs.update("/".join(path.parts[:i]) for i in range(1, len(path.parts)))
    clash = files & dirs
    if clash:
        raise UserError(
            f"{archive.name} holds {sorted(clash)[0]!r} as a file and as a folder; refusing to unpack it"
        )


def _check_caps(archive: Path, members: list[Member], budget: Budget) -> None:
    """The archive-bomb caps, counted over the whole download."""
    size = sum(m.size for m in members)
    budget.members += sum(not m.is_dir for m in members)
    budget.size += size
    refuse = f"{archive.name} looks like an archive bomb, not a competition: refusing to unpack it"
    if budget.members > MAX_MEMBERS:
        raise UserError(f"{refuse} ({budget.members:,} files, over the cap of {MAX_MEMBERS:,})")
    if budget.size > MAX_TOTAL:
        raise UserError(
            f"{refuse} (unpacks to {human_bytes(budget.size)}, over the cap of {human_bytes(MAX_TOTAL)})"
        )
    cap = f"the cap is {MAX_RATIO}x above {human_bytes(RATIO_FLOOR)}"
    packed = max(archive.stat().st_size, 1)
    if size > RATIO_FLOOR and size / packed > MAX_RATIO:
        raise UserError(
            f"{refuse} ({human_bytes(packed)} unpacks to {human_bytes(size)}, {size / packed:.0f}x; {cap})"
        )
    ratio = budget.size / max(budget.packed, 1)
    if budget.size > RATIO_FLOOR and ratio > MAX_RATIO:  # nested: counted from the download's bytes
        raise UserError(
            f"{refuse} (the {human_bytes(budget.packed)} download and the archives inside it would unpack "
            f"to {human_bytes(budget.size)}, {ratio:.0f}x; {cap})"
        )


def _check(archive: Path, members: list[Member], dest: Path, budget: Budget) -> list[PurePosixPath]:
    """Every path and link checked, names unique, the caps and the free space, before anything is
    written."""
    paths = [_member_path(m.name, archive) for m in members]
    for m in members:
        if m.is_link:
            raise UserError(f"{archive.name} holds a link {m.name!r}; refusing to unpack it")
    _check_unique(archive, members, paths, dest)
    _check_caps(archive, members, budget)
    need = sum(m.size for m in members) * SPACE_MARGIN
    probe = dest if dest.exists() else next(p for p in dest.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        raise UserError(
            f"unpacking {archive.name} needs {human_bytes(need)} but {probe} has {human_bytes(free)} "
            "free: free some space (or move data/ to a bigger disk) and rerun"
        )
    return paths


def extract(archive: Path, dest: Path, budget: Budget | None = None) -> list[Path]:
    """Unpack `archive` into `dest` after checking it; returns the files written. `budget` counts
    the caps over several archives (a download and the archives inside it)."""
    try:
        with _open(archive) as opened:
            members = [
                m for m in _members(archive, opened) if not m.name.startswith("__MACOSX/")
            ]  # macOS litter
            paths = _check(archive, members, dest, budget or Budget(archive.stat().st_size))
            files = [
                (m, dest.joinpath(*rel.parts)) for m, rel in zip(members, paths, strict=True) if not m.is_dir
            ]
            if kind(archive) == "7z":  # solid archives decompress in one pass: let py7zr write them
                with console.status(f"unpacking {archive.name} ({len(files)} files)"):
                    opened.extract(path=dest, targets=[m.handle for m, _ in files])
                return [target for _, target in files]
            for m, target in track(files, f"unpacking {archive.name}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                src = opened.open(m.handle) if kind(archive) == "zip" else opened.extractfile(m.handle)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            if kind(archive) == "tar":  # a compressed tar's checksum sits after the last member: read it
                while opened.fileobj.read(1 << 20):
                    pass
            return [target for _, target in files]
    except _damage_errors() as e:
        raise DamagedArchive(f"{archive} is damaged ({e})") from None


def extract_nested(archive: Path, dest: Path) -> None:
    """Unpack `archive`, then every archive found inside it, in place (inner ones are removed once
    unpacked). An inner archive whose members share one top folder (train.zip -> train/...) unpacks
    beside itself; one with loose files unpacks into a folder named after it."""
    pending, budget = [(archive, dest, 0)], Budget(archive.stat().st_size)
    while pending:
        path, into, depth = pending.pop()
        inners = [inner for inner in extract(path, into, budget) if kind(inner)]
        if path != archive:
            path.unlink()
        if inners and depth == MAX_DEPTH:
            raise UserError(
                f"{inners[0].name} is an archive nested {depth + 1} deep in {archive.name}; the cap is "
                f"{MAX_DEPTH} (an archive bomb?): refusing to unpack it"
            )
        pending += [(inner, inner_dest(inner), depth + 1) for inner in inners]


def inner_dest(inner: Path) -> Path:
    try:
        with _open(inner) as opened:
            names = [m.name.replace("\\", "/") for m in _members(inner, opened)]
    except _damage_errors() as e:
        raise DamagedArchive(f"{inner} is damaged ({e})") from None
    parts = [PurePosixPath(n).parts for n in names if not n.startswith("__MACOSX/")]
    tops = {p[0] for p in parts if p}  # `./` (tar czf x.tgz -C dir .) has no parts
    return inner.parent if len(tops) == 1 else inner.parent / stem(inner)
