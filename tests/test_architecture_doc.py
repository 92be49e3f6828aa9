"""docs/architecture.md names real files and symbols: every backticked repository path exists, and
every ``path: name`` is defined in that file, so a reader can follow a cell through the files it
names (and the page fails here when a file moves)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
FOLDERS = ("harness/", "models/", "baselines/", "tests/", "docs/")


def _refs() -> list[tuple[str, str | None]]:
    text = re.sub(r"`\s*\n\s*", "` ", PAGE.read_text())
    out = []
    for token in re.findall(r"`([^`]+)`", text.replace(":\n   ", ": ")):
        token = re.sub(r"\s+", " ", token.strip())
        path, _, name = token.partition(": ")
        if path.startswith(FOLDERS) and " " not in path and "*" not in path:
            out.append((path, name.split(".")[0].strip() or None))
    return out


def test_the_page_names_files_and_symbols():
    refs = _refs()
    assert len(refs) >= 30
    missing = [p for p, _ in refs if not (ROOT / p).exists()]
    assert not missing, missing
    undefined = []
    for path, name in refs:
        if name and (ROOT / path).is_file():
            src = (ROOT / path).read_text()
            if not re.search(rf"^\s*(def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]", src, re.M):
                undefined.append(f"{path}: {name}")
    assert not undefined, undefined
