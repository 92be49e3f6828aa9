"""Errors the CLI turns into one line on stderr (exit 2): each names the problem and the fix."""


class HarnessError(Exception):
    """A user-facing error; ``str(err)`` is a single line."""
