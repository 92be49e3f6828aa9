"""``harness report RECORDS_DIR --out DIR``: every output from records alone (no model runs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..records import load_dir
from .charts import all_charts
from .tables import formatted, leaderboard, with_paper

SORT_JS = """
document.querySelectorAll('table.board th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const rows = Array.from(body.rows);
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const num = s => { const v = parseFloat(s.replace(/[^0-9.eE+-]/g, '')); return isNaN(v) ? null : v; };
  rows.sort((a, b) => { const x = a.cells[col].innerText, y = b.cells[col].innerText;
    const nx = num(x), ny = num(y);
    const c = (nx !== null && ny !== null) ? nx - ny : x.localeCompare(y); return asc ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}));
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.board { border-collapse: collapse; font-size: 13px; }
table.board th, table.board td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
table.board th { background: #f0f0f0; cursor: pointer; }
table.board td:nth-child(-n+2) { text-align: left; }
.best { font-weight: bold; } .second { text-decoration: underline; }
img { max-width: 640px; margin: 1em 1em 0 0; }
"""


#: free-text notes beside the records (markdown paragraphs), appended to the leaderboard
NOTES = "NOTES.md"


def _notes_html(notes: str) -> str:
    if not notes:
        return ""
    paras = "".join(f"<p>{html.escape(p.strip())}</p>" for p in notes.split("\n\n") if p.strip())
    return f"<h2>Notes</h2>{paras}"


def build_report(records_dir: Path, out: Path) -> dict[str, Path]:
    recs = load_dir(records_dir)
    if not recs:
        from ..errors import HarnessError

        raise HarnessError(
            f"no records under '{records_dir}': run harness run --suite NAME --out {records_dir}"
        )
    out.mkdir(parents=True, exist_ok=True)
    df = with_paper(leaderboard(recs), recs)
    notes_file = records_dir / NOTES
    notes = notes_file.read_text().strip() if notes_file.is_file() else ""
    paths = {}
    paths["csv"] = out / "leaderboard.csv"
    df.to_csv(paths["csv"], index=False)
    paths["md"] = out / "leaderboard.md"
    paths["md"].write_text(_markdown(df) + (f"\n## Notes\n\n{notes}\n" if notes else ""))
    paths["tex"] = out / "leaderboard.tex"
    paths["tex"].write_text(formatted(df, "latex").to_latex(index=False, escape=False))
    charts = all_charts(df, recs, out)
    paths["html"] = out / "index.html"
    paths["html"].write_text(_html(df, charts, len(recs), notes))
    return paths


def _markdown(df) -> str:
    body = formatted(df, "markdown").to_markdown(index=False)
    return (
        "# seebench leaderboard\n\nAccuracy per task (exact match), mean, retention vs the same-run dense "
        "baseline [95% paired bootstrap CI], agreement with dense answers, prefill FLOPs (analytic), "
        "latency and conversion. **best**, _second best_ per backbone.\n\n" + body + "\n"
    )


def _html(df, charts: list[Path], n_records: int, notes: str = "") -> str:
    table = formatted(df, "html").to_html(index=False, escape=False, classes="board", border=0)
    imgs = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in charts
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>seebench leaderboard</title>
<style>{CSS}</style></head><body>
<h1>seebench leaderboard</h1>
<p>{n_records} records. Click a column header to sort. Bold: best, underlined: second best (per backbone).
Retention: accuracy relative to the dense baseline of the same run, with a 95% paired bootstrap interval.</p>
{table}
{_notes_html(notes)}<h2>Charts</h2>{imgs}
<script>{SORT_JS}</script></body></html>"""
