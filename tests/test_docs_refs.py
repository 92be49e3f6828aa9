"""Spec citations in comments and docstrings point inside the repository.

The code cites its specifications in comments and docstrings as a Markdown file with optional
section numbers (``docs/flops.md §2.4``, ``docs/baselines.md §3.2-3.4``, ``docs/design.md section 3``).
Every such citation under ``harness/``, ``models/``, ``baselines/`` and ``tests/`` must name a file
that exists (relative to the repository root or to the citing file's folder) and, for each section
number cited, a Markdown heading that starts with that number. A section sign that follows no file
name is ambiguous and is reported too. Only comments and docstrings are read: string literals in code
(file names a command writes, for instance) are not citations.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("harness", "models", "baselines", "tests")

#: a cited Markdown file (optionally with folders), or a bare ``README`` followed by a section
FILE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md|README)(?![\w-])")
#: one section reference after a file: a section sign or the word section, a number, maybe a range
REF = re.compile(
    r"[ \t\n,;(]*(?:and\s+)?(?:§\s?|sections?\s+)(\d+(?:\.\d+)*)(?:\s*[-–]\s*§?\s?(\d+(?:\.\d+)*))?"
)
#: the older style without a section sign: a dotted number directly after the file name
BARE_REF = re.compile(r"[ \t]+(\d+\.\d+(?:\.\d+)*)(?![\w.])")
HEADING = re.compile(r"^#{1,6}\s+§?(\d+(?:\.\d+)*)\.?(?=\s|$)")


def _comment_blocks(source: str) -> list[tuple[int, str]]:
    """(first line, text) of each run of comments on consecutive lines, without the ``#``."""
    blocks: list[tuple[int, list[str]]] = []
    last = -2
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row = tok.start[0]
        text = tok.string.lstrip("#").lstrip(":")
        if row == last + 1 and blocks:
            blocks[-1][1].append(text)
        else:
            blocks.append((row, [text]))
        last = row
    return [(row, "\n".join(lines)) for row, lines in blocks]


def _docstrings(source: str) -> list[tuple[int, str]]:
    """(first line, text) of the module, class and function docstrings."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                value = body[0].value.value
                if isinstance(value, str):
                    out.append((body[0].lineno, value))
    return out


@cache
def headings(path: Path) -> frozenset[str]:
    """Section numbers that start a Markdown heading of ``path`` (code fences skipped)."""
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            found.add(m.group(1))
    return frozenset(found)


def resolve(cited: str, citing: Path) -> Path | None:
    name = "README.md" if cited == "README" else cited
    for base in (citing.parent, ROOT):
        path = (base / name).resolve()
        if path.is_file() and ROOT in path.parents:
            return path
    return None


def citations(text: str) -> list[tuple[int, str, list[str]]]:
    """(offset, cited file, section numbers) of every citation in ``text``."""
    out, covered = [], []
    for m in FILE.finditer(text):
        sections, end = [], m.end()
        bare = BARE_REF.match(text, end)
        if bare:
            sections.append(bare.group(1))
            end = bare.end()
        while ref := REF.match(text, end):
            sections += [s for s in ref.groups() if s]
            end = ref.end()
        if m.group(1) == "README" and not sections:
            continue  # "the README" in prose, no section: not a citation of a numbered spec
        out.append((m.start(), m.group(1), sections))
        covered.append((m.start(), end))
    for m in re.finditer("§", text):
        if not any(a <= m.start() < b for a, b in covered):
            out.append((m.start(), "", [text[m.start() : m.start() + 12].split("\n")[0]]))
    return out


def problems_in(text: str, citing: Path, first_line: int = 1) -> list[str]:
    """One line per citation in ``text`` that does not resolve inside the repository."""
    rel = citing.relative_to(ROOT) if ROOT in citing.parents else citing
    out = []
    for offset, cited, sections in citations(text):
        where = f"{rel}:{first_line + text[:offset].count(chr(10))}"
        if not cited:
            out.append(f"{where}: '{sections[0]}' names no file: cite it as docs/<page>.md §N")
            continue
        path = resolve(cited, citing)
        if path is None:
            out.append(f"{where}: cites {cited}, which is not in the repository")
            continue
        missing = [s for s in sections if s not in headings(path)]
        if missing:
            out.append(f"{where}: {cited} has no heading numbered {', '.join(missing)}")
    return out


def scanned_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def file_problems(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    out = []
    for line, text in _comment_blocks(source) + _docstrings(source):
        out += problems_in(text, path, line)
    return out


def test_every_spec_citation_resolves():
    problems = [p for f in scanned_files() for p in file_problems(f)]
    assert not problems, "dangling spec citations:\n" + "\n".join(problems)


def test_the_scan_sees_the_code_citations():
    cited = set()
    for f in scanned_files():
        source = f.read_text(encoding="utf-8")
        for _, text in _comment_blocks(source) + _docstrings(source):
            cited |= {(c, s) for _, c, ss in citations(text) for s in ss}
    # the analytic FLOPs model cites the per-class terms, the in-LLM baselines their sections
    assert ("docs/flops.md", "2.5") in cited
    assert ("docs/baselines.md", "2.2") in cited
    assert len(cited) >= 40


def test_dangling_citations_are_reported():
    here = ROOT / "harness" / "example.py"
    ok = "visual side (docs/flops.md §2.4), stacks (docs/design.md section 4), ranges docs/flops.md §2.3-2.4"
    assert problems_in(ok, here) == []
    for bad in (
        "(docs/flops.md §9.9)",  # no such heading
        "(flops.md §2.4)",  # not relative to the root or the citing folder
        "(docs/no-such-page.md)",  # no such file
        "(docs/seed-methods.md §2-99)",  # the end of a range
        "(docs/baselines.md 7.7)",  # the style without a section sign
        "(README §2.3)",  # the repository README has no numbered sections
        "(a pitfall, §2.5)",  # a section of no file
    ):
        assert len(problems_in(bad, here)) == 1, bad
