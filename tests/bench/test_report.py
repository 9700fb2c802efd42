"""Pareto marking, extra columns from hooks, the written tables and the plot, and recommend."""

import csv
import io
import math

import pytest

from bench import recommend, report


def row(backbone, fmt, precision, auc, ms, mb, device="cpu", status="ok", **extra):
    r = {"backbone": backbone, "format": fmt, "precision": precision, "device": device, "runtime": f"{fmt} rt",
         "status": status, "bytes": int(mb * 1e6), "roc_auc": auc, "roc_auc_lo": auc - 0.02,
         "roc_auc_hi": min(1.0, auc + 0.02), "sensitivity": 0.9, "specificity": 0.8, "f1": 0.85,
         "b1_p50_ms": ms, "b1_p99_ms": ms * 1.2, "b1_spread": 0.03, "b1_ips": 1000 / ms, "params_m": 1.0,
         "gflops": 0.1, "agreement": 1.0, "auc_change": 0.0}
    r.update(extra)
    return r


def doc_of(rows):
    return {"format": "cxr-edge-bench/1", "complete": True, "artifacts": "artifacts", "method": "how",
            "environment": {"cpu": {"model": "test cpu", "flags": ["avx2"], "logical_cores": 2},
                            "gpu": None, "versions": {"torch": "x"},
                            "settings": {"device": "cpu", "threads_used": 2, "latency": {"batches": [1]}}},
            "backbones": {}, "rows": rows}


def test_pareto_marks_only_undominated_rows_per_device():
    rows = [row("a", "onnx", "fp32", 0.95, 10, 40), row("a", "onnx", "int8", 0.94, 5, 10),
            row("b", "onnx", "fp32", 0.93, 12, 50),  # dominated on both
            row("b", "onnx", "int8", 0.99, 50, 60, device="cuda"),  # alone on its device
            row("c", "onnx", "fp32", 0.99, 1, 1, status="failed")]
    report.mark_pareto(rows)
    assert [r["pareto_latency"] for r in rows] == [True, True, False, True, False]
    assert [r["pareto_bytes"] for r in rows] == [True, True, False, True, False]


def test_pareto_and_recommend_choose_on_validation_and_report_test():
    # "a" is better on test, "b" on validation: the choice must follow validation
    rows = [row("a", "onnx", "fp32", 0.99, 10, 40, val_roc_auc=0.90), row("b", "onnx", "fp32", 0.93, 10, 40,
                                                                          val_roc_auc=0.95)]
    report.mark_pareto(rows)
    assert [r["pareto_latency"] for r in rows] == [False, True]
    rec = recommend.recommend(doc_of(rows), budget_ms=20)
    text = "\n".join(rec.lines)
    assert rec.best["backbone"] == "b" and "chosen on validation ROC-AUC; figures on test" in text
    assert "validation ROC-AUC 0.950, test ROC-AUC 0.930" in text
    md = report.markdown(doc_of(rows))
    assert "chosen on validation ROC-AUC; figures on test" in md and "val AUC" in md
    # results without validation figures fall back to test, and say so
    for r in rows:
        del r["val_roc_auc"]
    report.mark_pareto(rows)
    assert [r["pareto_latency"] for r in rows] == [True, False]
    assert "chosen on test ROC-AUC" in "\n".join(recommend.recommend(doc_of(rows), budget_ms=20).lines)


def test_equal_rows_do_not_dominate_each_other():
    rows = [row("a", "onnx", "fp32", 0.9, 10, 40), row("a", "openvino", "fp32", 0.9, 10, 40)]
    report.mark_pareto(rows)
    assert all(r["pareto_latency"] for r in rows)


def test_columns_added_by_a_hook_appear_in_every_table():
    rows = [row("a", "onnx", "fp32", 0.95, 10, 40, deletion_auc=0.12, sanity_ok=True, note="text stays a note"),
            row("a", "onnx", "int8", 0.94, 5, 10, deletion_auc=0.2, sanity_ok=False, cam_error="boom")]
    assert report.extra_columns(rows) == ["deletion_auc", "sanity_ok"]
    doc = doc_of(rows)
    report.mark_pareto(rows)
    md = report.markdown(doc)
    header = next(line for line in md.splitlines() if line.startswith("| backbone"))
    assert "del AUC" in header and "sanity" in header and "note" not in header  # known hooks get short headers
    assert "0.120" in md and "| yes |" in md and "cam_error: boom" in md and "text stays a note" in md
    parsed = list(csv.DictReader(io.StringIO(report.csv_text(rows))))
    assert parsed[1]["deletion_auc"] == "0.2" and parsed[0]["cam_error"] == ""


def test_markdown_numbers_reasons_and_shows_spread():
    rows = [row("a", "onnx", "fp32", 0.95, 10, 40),
            {"backbone": "a", "format": "tensorrt", "precision": "fp16", "device": "cpu", "runtime": "TensorRT",
             "status": "skipped", "reason": "TensorRT engines run only on an NVIDIA GPU"}]
    report.mark_pareto(rows)
    md = report.markdown(doc_of(rows))
    assert "10.0 ±3%" in md and "skipped [1]" in md and "1. TensorRT engines run only" in md
    assert "test cpu" in md and "avx2" in md


def test_plot_writes_a_png(tmp_path):
    rows = [row(b, f, p, 0.9 + i / 100, 2 + i, 5 + i) for i, (b, f, p) in enumerate(
        [("a", "pytorch", "fp32"), ("a", "onnx", "int8"), ("b", "openvino", "fp16"), ("b", "coreml", "fp16")])]
    report.mark_pareto(rows)
    path = report.plot(doc_of(rows), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_ok_rows_still_writes(tmp_path):
    from PIL import Image

    path = report.plot(doc_of([]), tmp_path / "p.png")
    with Image.open(path) as im:  # a readable PNG of the figure's size (15 x 5.6 in at 120 dpi)
        assert im.format == "PNG" and im.size == (1800, 672)


def test_rich_table_renders(capsys):
    from rich.console import Console

    rows = [row("a", "onnx", "fp32", 0.95, 10, 40, deletion_auc=0.1)]
    report.mark_pareto(rows)
    Console(width=250).print(report.rich_table(doc_of(rows)))
    text = capsys.readouterr().out
    assert "0.950 (0.930-0.970)" in text and "del AUC" in text


def wide_rows():
    """Rows as wide as real ones get: the longest backbone names, big files, slow rows, wide bands, hook columns;
    within a backbone the first row is faster, smaller and more accurate than the rest."""
    names = ("mobilenetv3_large_100", "vit_base_patch16_224", "efficientnet_b0", "densenet121")
    kinds = (("pytorch", "fp32"), ("openvino", "int8"), ("executorch", "int8"), ("onnx", "fp16"))
    rows = [row(name, fmt, precision, 0.9 + 0.02 * i - 0.003 * j, 0.9 * 4.2 ** i * (1 + j), 85.83 * (i + 1) + j,
                b1_spread=1.04, b1_rel=12.3, b1_rel_spread=0.5, deletion_auc=0.1, cam_agreement=0.9, sanity_ok=True)
            for i, name in enumerate(names) for j, (fmt, precision) in enumerate(kinds)]
    rows.append(row("resnet50", "tensorrt", "fp16", math.nan, math.nan, 1, status="skipped", reason="no GPU " * 30))
    report.mark_pareto(rows)
    return rows


def test_summary_fits_100_columns_in_full():
    from rich.console import Console

    rows = wide_rows()
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(report.summary_table(doc_of(rows)))
    console.print(report.SUMMARY_LEGEND)
    for line in report.pick_lines(doc_of(rows)):
        console.print(line)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text  # nothing cut to fit
    front = [r for r in rows if r["pareto_latency"] or r["pareto_bytes"]]
    assert 0 < len(front) < len(rows) - 1
    for r in rows[:-1]:  # the Pareto rows, each with its whole ROC-AUC cell; no other ok row
        assert (report._short_auc_cell(r) in text) == (r in front), r
    assert "10 ms: " in text and "30 ms: " in text and "100 ms: " in text and "no GPU" not in text


def test_pick_lines_name_the_recommended_row_or_the_fastest():
    rows = ROWS[:4]
    lines = report.pick_lines(doc_of(rows))
    assert lines[1] == "  10 ms: mid onnx int8, ROC-AUC 0.940, p50 8.00 ms, 6.0 MB"
    assert lines[3].startswith("  100 ms: big onnx fp32")
    slow = report.pick_lines(doc_of([row("big", "onnx", "fp32", 0.97, 400, 90)]))
    assert slow[1] == "  10 ms: nothing fits (fastest: big onnx fp32, ROC-AUC 0.970, p50 400.00 ms, 90.0 MB)"


def test_columns_are_chosen_by_key():
    rows = wide_rows()
    cols = report.columns(rows, [1])
    assert [c[0] for c in report.select_columns(cols, ["mem", "backbone"])] == ["mem", "backbone"]
    with pytest.raises(ValueError, match="nope is not a column.*backbone, artifact.*deletion_auc"):
        report.select_columns(cols, ["backbone", "nope"])
    assert report.parse_columns(" backbone, p50 ,") == ["backbone", "p50"]
    with pytest.raises(ValueError, match="names no column"):
        report.parse_columns(" , ")


# ------------------------------------------------------------------------------------- recommend

ROWS = [row("big", "onnx", "fp32", 0.97, 40, 90), row("mid", "onnx", "fp32", 0.95, 15, 20, sensitivity=0.97),
        row("mid", "onnx", "int8", 0.94, 8, 6), row("small", "openvino", "int8", 0.90, 3, 2, sensitivity=0.99),
        row("x", "onnx", "fp16", 0.99, 1, 1, status="failed")]


def test_recommend_takes_the_best_auc_within_budget():
    rec = recommend.recommend(doc_of(ROWS), budget_ms=20)
    assert rec.best["backbone"] == "mid" and rec.best["precision"] == "fp32" and rec.candidates == 3
    text = "\n".join(rec.lines)
    assert "test ROC-AUC 0.950" in text and "Runner-up: mid onnx int8" in text and "slower than 20 ms" in text


def test_recommend_applies_the_sensitivity_floor():
    rec = recommend.recommend(doc_of(ROWS), budget_ms=20, min_sensitivity=0.95)
    assert rec.best["backbone"] == "mid" and rec.best["precision"] == "fp32"
    rec = recommend.recommend(doc_of(ROWS), budget_ms=10, min_sensitivity=0.95)
    assert rec.best["backbone"] == "small"


def test_recommend_says_what_would_fit_when_nothing_does():
    rec = recommend.recommend(doc_of(ROWS), budget_ms=2)
    assert rec.best is None and "No artifact fits" in rec.lines[0] and "Fastest: small" in rec.lines[1]
    rec = recommend.recommend(doc_of(ROWS), budget_ms=10, min_sensitivity=0.999)
    assert rec.best is None and "No row reaches sensitivity 0.999" in rec.lines[-1]
    rec = recommend.recommend(doc_of(ROWS), budget_ms=2.5, min_sensitivity=0.96)
    assert rec.best is None and "needs a budget of 3.0 ms" in rec.lines[-1]


@pytest.mark.parametrize("kwargs, message", [
    ({"budget_ms": 0}, "--budget-ms"), ({"budget_ms": 5, "min_sensitivity": 2}, "--min-sensitivity"),
    ({"budget_ms": 5, "device": "cuda"}, "not cuda"), ({"budget_ms": 5, "batch": 8}, "pass --batch"),
])
def test_recommend_rejects_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        recommend.recommend(doc_of(ROWS), **kwargs)


def test_recommend_needs_a_device_when_results_hold_two():
    rows = ROWS + [row("mid", "onnx", "fp32", 0.95, 1, 20, device="cuda")]
    with pytest.raises(ValueError, match="choose one with --device"):
        recommend.recommend(doc_of(rows), budget_ms=5)
    assert recommend.recommend(doc_of(rows), budget_ms=5, device="cuda").best["device"] == "cuda"
    assert not math.isnan(recommend.recommend(doc_of(rows), budget_ms=50, device="cpu").best["roc_auc"])
