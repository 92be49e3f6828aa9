"""Errors the CLI turns into one line on stderr (exit 2): each names the problem and the fix."""

from harness.models.errors import SeebenchError


class HarnessError(SeebenchError):
    """A user-facing error of the instrument; ``str(err)`` is a single line."""
