"""Type check with pyright ([tool.pyright] in pyproject.toml: basic mode, Python 3.11).

One pyright run over models/, baselines/, harness/ and tests/; this fails when

- models/ or baselines/ have any error (they are kept clean), or
- an import anywhere cannot be resolved (a moved module, a missing dependency, a stale editable
  install: re-run ./install.sh after adding a file under models/ or baselines/).

harness/ and tests/ still have other errors; they are counted, not gated.

    python .ci/typecheck.py [--pythonpath PYTHON] [pyright options...]

Without --pythonpath pyright resolves imports through this interpreter's environment, so
``.venv-ci/bin/python .ci/typecheck.py`` checks against that venv's installed packages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRICT = ("models/", "baselines/")  # any error here fails
UNRESOLVED_RULES = {"reportMissingImports", "reportMissingModuleSource"}


def unresolved(d: dict) -> bool:
    msg = d.get("message", "")
    return (
        d.get("rule") in UNRESOLVED_RULES
        or "could not be resolved" in msg
        or "is unknown import symbol" in msg  # from-import of a name a module no longer has
    )


def line(rel: str, d: dict) -> str:
    start = d["range"]["start"]
    rule = f" ({d['rule']})" if d.get("rule") else ""
    msg = d["message"].replace("\n", "\n    ")
    return f"{rel}:{start['line'] + 1}:{start['character'] + 1} - {d['severity']}: {msg}{rule}"


def main(argv: list[str]) -> int:
    args = list(argv)
    if "--pythonpath" not in args:
        args = ["--pythonpath", sys.executable, *args]
    # the project is this repository (never a pyrightconfig.json in a parent folder)
    cmd = [sys.executable, "-m", "pyright", "--outputjson", "--project", str(ROOT / "pyproject.toml"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(proc.stdout + proc.stderr)
        print(f"typecheck: pyright gave no report (exit {proc.returncode}): {' '.join(cmd)}")
        return 2
    strict, missing, other = [], [], 0
    for d in report.get("generalDiagnostics", []):
        path = Path(d.get("file", ""))
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if unresolved(d):
            missing.append(line(rel, d))
        elif d.get("severity") == "error":
            if rel.startswith(STRICT):
                strict.append(line(rel, d))
            else:
                other += 1
    for text in strict + missing:
        print(text)
    s = report.get("summary", {})
    print(
        f"typecheck: {s.get('filesAnalyzed', '?')} files; models/ baselines/: {len(strict)} errors; "
        f"unresolved imports anywhere: {len(missing)}; other errors (harness/, tests/; not gated): {other}"
    )
    return 1 if strict or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
