"""What a `kagglecv` command printed, as a test reads it."""

from __future__ import annotations


def cli_text(capsys) -> str:
    """What a CLI call printed, on one line; a user never sees a traceback."""
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return " ".join(text.split())
