"""On or off, read one way wherever a user sets a switch: make's UPLOAD=0, FORCE=no and RESUME=off
(passed on as `kagglecv submit --upload=0`), and KAGGLECV_ALLOW_LOOPBACK=false from the environment.

    switch("no", "UPLOAD")  # False; "maybe" is a UserError naming UPLOAD and the words it takes

A word that is neither on nor off is an error, never a guess: UPLOAD=0 must not upload.
"""

from __future__ import annotations

from kagglecv.core.errors import UserError

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off", "")


def switch(text: str, name: str) -> bool:
    """True for 1/true/yes/on, False for 0/false/no/off or nothing (any case, spaces around ignored)."""
    word = text.strip().lower()
    if word in ON:
        return True
    if word in OFF:
        return False
    raise UserError(
        f"{name} is on or off, not {text!r}: 1, true, yes or on turns it on; 0, false, no, off or "
        "nothing leaves it off"
    )
