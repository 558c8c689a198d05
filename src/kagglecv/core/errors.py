"""Errors a user can cause. The CLI prints them in one or two lines, without a traceback."""


class UserError(Exception):
    """Something the user can fix: bad config, missing files, wrong CSV. The message says what and how."""


def one_line(text: str, limit: int = 300) -> str:
    """An error's text on one line of at most about `limit` characters, cut between words with " …":
    never inside a word, so a URL in it stays whole (or goes, where it is the first word to pass)."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line.rfind(" ", 0, limit)
    if cut <= 0:  # one word longer than the limit: keep it whole rather than cut into it
        cut = line.find(" ")
        return line if cut < 0 else line[:cut] + " …"
    return line[:cut].rstrip(" ,;:(") + " …"
