"""User-facing errors: the CLI prints their message and exits with status 2, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad parameter, bad input file); the message says what and where."""

    exit_code = 2
