"""One clean terminal: while a cell runs, what the libraries print to stderr (lmms-eval's and
datasets' progress bars, their log lines, Python warnings) goes to the run folder's log file, so
seebench's own progress bar is the only thing moving on screen; ``--verbose`` leaves it alone.

The capture is at the file-descriptor level (fd 2), so it also takes what C extensions and
handlers that hold the process's original ``sys.__stderr__`` write; seebench's bar and tables are
on stdout and are not touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

WARNING_LINE = re.compile(r"(warn|error)", re.IGNORECASE)  # UserWarning, FutureWarning, ValueError, ...


@contextlib.contextmanager
def stderr_to(log: Path | None) -> Iterator[None]:
    """Within the block, fd 2 and ``sys.stderr`` write to ``log`` (appended); None: no change."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_fd, saved_stream = os.dup(2), sys.stderr
    os.dup2(fd, 2)
    os.close(fd)
    # the process's own stderr object writes to fd 2, wherever fd 2 points now
    sys.stderr = sys.__stderr__ if sys.__stderr__ is not None else saved_stream
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stderr = saved_stream
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


def log_summary(log: Path, since: int) -> str | None:
    """One line on what the libraries said during this run (the log from byte ``since`` on):
    how many lines, and the distinct warnings and errors among them (at most three shown)."""
    if not log.exists() or log.stat().st_size <= since:
        return None
    with log.open("rb") as fh:
        fh.seek(since)
        text = fh.read().decode("utf-8", "replace")
    lines = [ln.split("\r")[-1].strip() for ln in text.split("\n") if ln.strip()]
    warnings = list(dict.fromkeys(ln[:160] for ln in lines if WARNING_LINE.search(ln)))
    head = f"library output of this run: {len(lines)} lines in {log}"
    if not warnings:
        return head + " (no warnings)"
    shown = "; ".join(warnings[:3]) + (f"; ... ({len(warnings) - 3} more)" if len(warnings) > 3 else "")
    return f"{head}, {len(warnings)} distinct warnings: {shown}"
