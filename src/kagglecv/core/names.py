"""One rule for the names a user or a shared folder hands to kagglecv that become folder names and
values in generated code: run ids (runs/<comp>/<run>/, kernels/<comp>-<run>/) and competition slugs
(competitions/<slug>.yaml, data/<slug>/, Kaggle's own slug).

    check_name(args.run, "RUN")           # 'exp1' passes; '../other-comp/x', 'a\"b', '.hidden' are refused
    is_plain_name(folder.name)            # a folder in a shared runs/ that breaks it is skipped, never picked

Letters, digits, '-', '_' and '.', starting with a letter or digit, at most MAX_NAME characters: no
path separators, no '..' on its own, nothing that means something to a shell, Make or Python.
"""

from __future__ import annotations

import re

from kagglecv.core.errors import UserError

MAX_NAME = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RULE = f"letters, digits, - _ . only, starting with a letter or digit, at most {MAX_NAME} characters"


def is_plain_name(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_NAME and NAME_PATTERN.fullmatch(text) is not None


def check_name(text: object, what: str) -> str:
    """`text` when it follows the rule; else one line saying which value broke it and what is allowed."""
    if not is_plain_name(text):
        shown = repr(text) if len(repr(text)) <= 2 * MAX_NAME else repr(text)[: 2 * MAX_NAME] + "…"
        raise UserError(f"{what} must be a plain name ({NAME_RULE}), not a path or code: got {shown}")
    return str(text)
