"""The README and docs/ stay true to the repository: every relative link and image resolves (down to
the heading an #anchor names), the faults table names only tests that exist, the README stays a short
first contact, and docs/architecture.md names only modules that exist.

Reads files only: no kagglecv import, no torch, milliseconds."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "kagglecv"
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """The text with fenced blocks and code spans blanked out: `[k](v)` inside code is no link."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def links(text: str) -> list[str]:
    """Every link target in a page: inline links and images, reference definitions, HTML src/href."""
    prose = without_code(text)
    found = [m.group(1) for m in INLINE_LINK.finditer(prose)]
    found += [m.group(1) for m in REFERENCE_DEF.finditer(prose)]
    found += [m.group(1) for m in HTML_SRC.finditer(prose)]
    return found


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)) or target.startswith("//")


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: its text lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters and digits of any script, and '_'
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings, numbered like GitHub's when a heading text repeats."""
    seen: dict[str, int] = {}
    ids = set()
    for m in HEADING.finditer(without_fences(page.read_text(encoding="utf-8"))):
        base = github_anchor(m.group(2))
        n = seen.get(base, 0)
        ids.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return ids


def without_fences(text: str) -> str:
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.exists():
            problems.append(
                f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            )
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{target}: {dest.name} has no heading with the id #{anchor}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page) == []


def test_the_readme_links_to_every_page_of_the_manual():
    linked = {
        (README.parent / unquote(t.partition("#")[0])).resolve()
        for t in links(README.read_text(encoding="utf-8"))
        if not is_external(t)
    }
    assert sorted(p.name for p in DOCS.glob("*.md") if p.resolve() not in linked) == []


# --- the faults table --------------------------------------------------------------------------------

FAULTS = DOCS / "faults.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"


def cells(row: str) -> list[str]:
    """A Markdown table row's cells; an escaped \\| stays inside its cell."""
    inner = row.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip() for c in re.split(r"(?<!\\)\|", inner)]


def faults_rows() -> tuple[list[str], list[list[str]]]:
    text = FAULTS.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, f"{FAULTS.name} keeps one {START} ... {END}"
    table = [line for line in text.split(START)[1].split(END)[0].splitlines() if line.strip().startswith("|")]
    header, rows = cells(table[0]), [cells(line) for line in table[2:]]
    return header, rows


def defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        names |= set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    return names


def test_every_test_the_faults_table_names_exists():
    header, rows = faults_rows()
    assert header[-1] == "test" and len(rows) >= 100, "the faults table: one row per case, its test last"
    torn = [" | ".join(row) for row in rows if len(row) != len(header)]
    assert torn == [], f"rows with other than {len(header)} cells (a '|' in a cell must be written '\\|')"
    named = {
        name
        for row in rows
        for code in re.findall(r"`([^`]+)`", row[-1])
        for name in re.findall(r"\btest_\w+", code)  # `test_x[param]` -> test_x
    }
    assert len(named) >= 100
    assert sorted(named - defined_tests()) == []


# --- sizes --------------------------------------------------------------------------------------------


def test_the_readme_is_short_and_the_manual_is_in_docs():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    assert len(list(DOCS.glob("*.md"))) >= 4


# --- module paths -------------------------------------------------------------------------------------


def stages() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())


def test_every_module_path_in_architecture_md_exists():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for m in re.finditer(r"\bsrc/kagglecv/[\w./-]*[\w/]", text):
        if not (ROOT / m.group(0)).exists():
            missing.append(m.group(0))
    stage = "|".join(stages())
    # core/runs.py, prepare/sources/kaggle.py, report/look/: not inside a longer path such as data/<comp>/train/
    for m in re.finditer(rf"(?<![\w/.<>-])(?:{stage})/(?:[\w-]+/)*(?:[\w-]+\.py\b)?", text):
        if not (PACKAGE / m.group(0)).exists():
            missing.append(m.group(0))
    assert len(re.findall(rf"(?:{stage})/[\w/]+\.py", text)) >= 40, "architecture.md lists the modules"
    assert missing == []


def test_every_python_file_the_docs_name_exists():
    """A `<name>.py` in README or docs/ is a file of this repository (by name): no module name from before
    the stage folders (infer.py, ledger.py, cli_parser.py, ...) survives. predict.py is the script
    `make export` writes (ship/templates/export_predict.py)."""
    here = {p.name for folder in ("src", "tests", "scripts") for p in (ROOT / folder).rglob("*.py")}
    written = {"predict.py"}
    stale = set()
    for page in pages():
        for name in re.findall(r"(?<![\w.-])([\w-]+\.py)\b", page.read_text(encoding="utf-8")):
            if name not in here | written:
                stale.add(f"{page.relative_to(ROOT)}: {name}")
    assert sorted(stale) == []


def test_python_dash_m_names_the_package():
    for page in pages():
        assert "python -m kagglecv.cli" not in page.read_text(encoding="utf-8"), page.name
