"""Errors a user can cause. The CLI prints them in one or two lines, without a traceback."""


class UserError(Exception):
    """Something the user can fix: bad config, missing files, wrong CSV. The message says what and how."""
