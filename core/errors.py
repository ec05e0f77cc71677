"""The one exception type that the CLI turns into exit code 2 and a single line."""


class UserError(Exception):
    """Something the user can fix: a bad value, a missing file, an absent backend.

    The message must say what was wrong *and* what to do, in one line.
    Backends raise it too (e.g. for missing ImageNet weights offline).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint
        super().__init__(message if not hint else f"{message}; {hint}")
