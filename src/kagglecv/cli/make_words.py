"""What the Makefile hands kagglecv, read back as the user meant it. make passes every variable as one
word (never pasted into the shell's text), so two of them need reading here:

    switch_words(["submit", "--upload=0"], {"--upload"})   # ["submit"]: UPLOAD=0 does not upload
    img_paths("my dir/a.png")                               # ["my dir/a.png"] when that file is there
"""

from __future__ import annotations

import glob
import shlex
from pathlib import Path

from kagglecv.core.errors import UserError
from kagglecv.core.flags import switch

SPACED_PATH = "IMG='\"my dir/a.png\" b.png'"


def switch_words(argv: list[str], switches: set[str]) -> list[str]:
    """`--upload=<word>`, the way make passes UPLOAD, as the on/off option argparse knows: `--upload`
    when the word is on, nothing when it is off (core.flags.switch reads it; `--upload` alone stays
    on). A word after `--` is left alone."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        option, eq, value = word.partition("=")
        if not (eq and option in switches):
            out.append(word)
        elif switch(value, f"{option[2:].upper()} ({option})"):
            out.append(option)
    return out


def _found(path: str) -> bool:
    """A file or folder that is there, or a glob that matches one."""
    full = str(Path(path).expanduser())
    return Path(full).exists() or (glob.has_magic(path) and bool(glob.glob(full, recursive=True)))


def img_paths(text: str) -> list[str]:
    """make's IMG as paths: the whole value when it names a file or folder (or is a glob that matches
    one), so IMG="my dir/a.png" is one path; else its words split as the shell splits them (quotes
    and backslashes keep a space inside a path). Globs stay unexpanded: kagglecv predict expands them."""
    if not text.strip():
        return []
    if _found(text):
        return [text]
    try:
        words = shlex.split(text)
    except ValueError:
        raise UserError(f"IMG={text!r}: a quote is not closed; e.g. {SPACED_PATH}") from None
    missing = [w for w in words if not _found(w)]
    if len(words) > 1 and missing and not set(text) & set("'\"\\"):  # quoted already: predict names it
        raise UserError(
            f"IMG={text!r} is neither one path nor {len(words)} paths: {missing[0]!r} does not exist; "
            f"quote a path that holds spaces inside IMG, e.g. {SPACED_PATH}"
        )
    return words
