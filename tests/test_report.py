"""harness report: tables and charts from records only; the HTML renders in headless Chromium."""

import shutil
import subprocess

import pytest

from harness.records import Record, save
from harness.report.charts import pareto
from harness.report.stats import mcnemar_p, retention_ci
from harness.report.tables import leaderboard, marks


def _write(tmp_path):
    out = tmp_path / "records"
    for method, acc_bits, tflops, ms in [("dense", [1, 1, 1, 0] * 10, 2.0, 40.0), ("fastv", [1, 0, 1, 0] * 10, 0.8, 15.0),
                                         ("vtw", [1, 1, 0, 0] * 10, 1.0, 20.0)]:  # fmt: skip
        for task in ("shapes_exist", "shapes_attr"):
            per = {f"{task}/{i}": float(b) for i, b in enumerate(acc_bits)}
            save(Record(fingerprint=f"{method}{task}".ljust(64, "0"), backbone="tiny", method=method, task=task,
                        scenario="accuracy", metrics={"accuracy": sum(acc_bits) / 40},
                        details={"per_sample": per, "predictions": {k: str(v) for k, v in per.items()}}), out)  # fmt: skip
        save(Record(fingerprint=f"{method}fl".ljust(64, "0"), backbone="tiny", method=method, task="none",
                    scenario="flops", metrics={"flops_total_prefill": tflops * 1e12,
                                               "flops_visual_side_vica": tflops * 5e11}), out)  # fmt: skip
        save(Record(fingerprint=f"{method}lt".ljust(64, "0"), backbone="tiny", method=method, task="none",
                    scenario="latency", metrics={"prefill_p50_s": ms / 1e3, "batch_size": 1}), out)  # fmt: skip
    return out


def test_leaderboard_retention_and_marks(tmp_path):
    from harness.records import load_dir

    df = leaderboard(load_dir(_write(tmp_path)))
    row = df[df["method"] == "fastv"].iloc[0]
    assert row["mean"] == pytest.approx(0.5) and row["retention"] == pytest.approx(0.5 / 0.75)
    assert row["retention_lo"] <= row["retention"] <= row["retention_hi"]
    m = marks(df)
    dense_idx = df.index[df["method"] == "dense"][0]
    fastv_idx = df.index[df["method"] == "fastv"][0]
    assert m[(dense_idx, "mean")] == "best" and m[(fastv_idx, "TFLOPs")] == "best"


def test_retention_of_a_trained_variant_is_against_its_reference_backbone(tmp_path):
    from harness.records import load_dir
    from harness.tables import accuracy_frame

    out = _write(tmp_path)
    per = {f"shapes_exist/{i}": float(b) for i, b in enumerate([1, 1, 0, 0] * 10)}
    cell = {"backbone": {"name": "tiny-vica", "model": "embedded:vica", "reference": "tiny"}}
    save(Record(fingerprint="v".ljust(64, "0"), backbone="tiny-vica", method="vica", task="shapes_exist",
                scenario="accuracy", metrics={"accuracy": 0.5}, cell=cell,
                details={"per_sample": per, "predictions": {k: str(v) for k, v in per.items()}}), out)  # fmt: skip
    recs = load_dir(out)
    row = leaderboard(recs).set_index("method").loc["vica"]
    # tiny's dense on the same task (the variant has no dense row of its own)
    assert row["retention"] == pytest.approx(0.5 / 0.75)
    frame = accuracy_frame(recs)
    assert frame.loc[("tiny-vica", "vica"), "retention"] == pytest.approx(0.5 / 0.75)


def test_stats():
    d = {str(i): 1.0 for i in range(20)}
    assert retention_ci(d, d)[0] == 1.0
    worse = dict(d) | {str(i): 0.0 for i in range(10)}
    assert mcnemar_p(d, worse) < 0.01 and mcnemar_p(d, d) == 1.0
    assert pareto([(1, 0.5), (2, 0.4), (3, 0.9), (0.5, 0.2)]) == [(0.5, 0.2), (1, 0.5), (3, 0.9)]


def test_report_outputs_from_records_only(tmp_path):
    from harness.cli import main

    records = _write(tmp_path)
    out = tmp_path / "report"
    assert main(["report", str(records), "--out", str(out)]) == 0
    for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "index.html", "accuracy_vs_flops.png",
                 "accuracy_vs_latency.png", "latency_vs_batch.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    md = (out / "leaderboard.md").read_text()
    assert "**" in md and "retention" in md
    assert "\\textbf{" in (out / "leaderboard.tex").read_text()
    assert "## Notes" not in md


def test_notes_beside_the_records_join_the_leaderboard(tmp_path):
    from harness.cli import main

    records = _write(tmp_path)
    (records / "NOTES.md").write_text("fastv is <low> here.\n\nSecond paragraph.")
    out = tmp_path / "report"
    assert main(["report", str(records), "--out", str(out)]) == 0
    assert (
        (out / "leaderboard.md")
        .read_text()
        .endswith("## Notes\n\nfastv is <low> here.\n\nSecond paragraph.\n")
    )
    page = (out / "index.html").read_text()
    assert "<h2>Notes</h2><p>fastv is &lt;low&gt; here.</p><p>Second paragraph.</p>" in page


def test_html_renders_in_headless_chromium(tmp_path):
    from harness.report.build import build_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed for this check (.ci/run installs Debian's chromium)"
    paths = build_report(_write(tmp_path), tmp_path / "report")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", paths["html"].as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.stat().st_size > 10_000
    dom = subprocess.run([chromium, *flags, "--dump-dom", paths["html"].as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    assert "<table" in dom and dom.count("<tr") >= 4 and "fastv" in dom
