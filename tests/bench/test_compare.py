"""`cxr-edge compare`: two benchmarks of the same artifacts, row by row, against the band they stated."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench import compare, publish, results_file
from cli.main import app


def _row(fmt, p50, spread, auc=0.95, status="ok"):
    return {"backbone": "resnet18", "format": fmt, "precision": "fp32", "device": "cpu", "runtime": "rt",
            "status": status, "roc_auc": auc, "roc_auc_lo": auc - 0.01, "roc_auc_hi": auc + 0.01,
            "sensitivity": 0.9, "specificity": 0.8, "b1_p50_ms": p50, "b1_spread": spread,
            "b8_p50_ms": 8 * p50, "b8_spread": spread}


def _doc(rows, threads=1):
    return {"format": results_file.RESULTS_FORMAT, "rows": rows,
            "environment": {"settings": {"threads_used": threads, "device": "cpu"}, "cpu": {"model": "x"},
                            "versions": {"torch": "2"}}}


A = _doc([_row("onnx", 10.0, 0.06), _row("openvino", 10.0, 0.05), _row("tflite", 1.0, 0.0),
          _row("coreml", 1.0, 0.0, status="failed")])
B = _doc([_row("onnx", 10.5, 0.02), _row("openvino", 13.0, 0.01, auc=0.951), _row("coreml", 1.0, 0.0)], threads=2)


def test_a_change_inside_the_stated_spread_reproduces_and_one_outside_does_not():
    cmp = compare.compare(A, B, "first", "second")
    rows = {r["row"].split()[1]: r for r in cmp.rows}
    assert set(rows) == {"onnx", "openvino"}  # only ok rows present in both
    assert rows["onnx"]["b1_change"] == pytest.approx(0.05) and rows["onnx"]["b1_spread"] == 0.06  # larger spread
    assert rows["onnx"]["b1_within_spread"] and not rows["openvino"]["b1_within_spread"]
    assert rows["openvino"]["b1_change"] == pytest.approx(0.3)
    assert rows["onnx"]["accuracy_max_change"] == 0 and rows["openvino"]["accuracy_max_change"] == pytest.approx(0.001)
    assert cmp.only_a == ["resnet18 tflite fp32 cpu (rt)"] and cmp.only_b == ["resnet18 coreml fp32 cpu (rt)"]
    assert cmp.differences == ["setting threads_used: 1 -> 2"]
    s = cmp.summary(1, 0.10)
    assert (s["n"], s["within_spread"], s["within_bound"]) == (2, 1, 1)
    assert s["largest_row"].startswith("resnet18 openvino") and cmp.batches == [1, 8]
    text = " ".join(compare.summary_lines(cmp))
    assert "1 of 2 rows have identical test figures" in text and "threads_used: 1 -> 2" in text


def test_the_p50_relative_to_the_probe_reproduces_where_the_machine_was_slower_as_a_whole():
    """Run b 20% slower in every row and in its probe timed in turns: the ms figures leave their band, the
    probe-relative ones do not; the probe factor is the in-turns one."""
    a = _doc([_row("onnx", 10.0, 0.03), _row("openvino", 20.0, 0.03)])
    b = _doc([_row("onnx", 12.0, 0.03), _row("openvino", 24.4, 0.03)])
    for doc, probe in ((a, 2.0), (b, 2.4)):
        for r in doc["rows"]:
            r["b1_rel"], r["b1_rel_spread"] = r["b1_p50_ms"] / probe, 0.02
        doc["environment"]["speed_probe"] = {"workload": "w", "before_ms": 9.0, "after_ms": 9.0,
                                             "in_turns": [{"timed": "all", "round_ms": [probe] * 4, "ms": probe}]}
    cmp = compare.compare(a, b)
    s = cmp.summary(1, 0.10)
    assert s["within_spread"] == 0 and (s["rel_n"], s["rel_within_spread"]) == (2, 2)
    assert (s["rel_largest_change"] == pytest.approx(24.4 / 24 - 1)
            and s["rel_largest_row"].startswith("resnet18 openvino"))
    assert cmp.probes["in_turns"] and cmp.probes["factor"] == pytest.approx(1.2)
    text = " ".join(compare.summary_lines(cmp))
    assert "Relative to the speed probe timed in the same turns: 2 of 2 rows within their stated band" in text
    rep = publish.reproduction_text(cmp.to_dict(0.10))
    assert "relative to the speed probe timed in the same turns 2 of 2 within their stated band" in rep
    assert "timed in turns with the rows) took 2.00 then 2.40 ms (20.0% slower)" in rep
    # one run without the in-turns probe: the before/after probes are compared, and no row has a relative change
    del a["environment"]["speed_probe"]["in_turns"], a["rows"][0]["b1_rel"]
    cmp = compare.compare(a, b)
    assert not cmp.probes["in_turns"] and cmp.probes["factor"] == pytest.approx(1.0)
    assert cmp.summary(1, 0.10)["rel_n"] == 1


def test_a_nested_setting_that_differs_is_named_by_its_key():
    a, b = _doc([_row("onnx", 10.0, 0.03)]), _doc([_row("onnx", 10.0, 0.03)])
    a["environment"]["settings"]["latency"] = {"rounds": 2, "budget_s": 6.0}
    b["environment"]["settings"]["latency"] = {"rounds": 4, "budget_s": 6.0}
    assert compare.compare(a, b).differences == ["setting latency.rounds: 2 -> 4"]


def test_relative_change_is_the_spread_formula():
    assert compare.relative_change(10, 12) == pytest.approx(0.2) == compare.relative_change(12, 10)
    assert compare.relative_change(0, 1) is None and compare.relative_change(None, 1) is None


def test_cli_writes_json_fails_on_request_and_the_report_quotes_it(tmp_path):
    for name, doc in (("a", A), ("b", B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    cli = CliRunner()
    r = cli.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    assert "1 of 2 rows changed by no more than the band" in " ".join(r.output.split())
    rep = json.loads((tmp_path / "c.json").read_text())
    assert rep["summary"][0]["within_spread"] == 1 and rep["accuracy_identical"] == 1
    assert cli.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--fail"]).exit_code == 1
    assert cli.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--fail"]).exit_code == 0
    text = publish.reproduction_text(rep)
    assert "1 of 2 rows have identical test accuracy" in text and "p50 at batch 1: 1 of 2 rows" in text
    r = cli.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output


def _timed(fmt, auc, p50):
    return {**_row(fmt, p50, 0.01, auc=auc), "bytes": 1000}


def test_whole_run_factor_residuals_rank_and_conclusions():
    a = _doc([_timed("onnx", 0.95, 8.0), _timed("openvino", 0.96, 20.0), _timed("tflite", 0.94, 5.0),
              _timed("coreml", 0.97, 40.0)])
    # every row 20% slower and one 10% more on top: the factor takes the 20%, the residual shows the rest
    b = _doc([_timed("onnx", 0.95, 9.6), _timed("openvino", 0.96, 24.0), _timed("tflite", 0.94, 6.0),
              _timed("coreml", 0.97, 52.8)])
    a["environment"]["speed_probe"] = {"workload": "w", "before_ms": 4.0, "after_ms": 6.0}
    b["environment"]["speed_probe"] = {"workload": "w", "before_ms": 6.0, "after_ms": 6.0}
    cmp = compare.compare(a, b)
    s = cmp.summary(1, 0.10)
    assert s["machine_factor"] == pytest.approx(1.2 * 1.1 ** 0.25)
    assert s["rank_spearman"] == pytest.approx(1.0)
    assert s["residual_largest"] == pytest.approx(1.1 / 1.1 ** 0.25 - 1)
    assert cmp.probes["factor"] == pytest.approx(1.2)
    c = cmp.conclusions
    assert c["pareto_same"] and c["picks_same"] and c["picks_a"]["10"] == "resnet18 onnx fp32 cpu (rt)"
    assert c["picks_a"]["30"] == "resnet18 openvino fp32 cpu (rt)"
    text = " ".join(compare.summary_lines(cmp))
    assert "Pareto-optimal rows the same" in text and "5.00 ms -> 6.00 ms (20.0% slower)" in text
    # a slower run moves the 30 ms pick off openvino (24 -> 31 ms): the conclusions differ, and say how
    b["rows"][1]["b1_p50_ms"] = 31.0
    c = compare.compare(a, b).conclusions
    assert not c["picks_same"] and c["picks_b"]["30"] == "resnet18 onnx fp32 cpu (rt)"
    rep = compare.compare(a, b).to_dict(0.10)
    text = publish.reproduction_text(rep)
    assert ("What to ship did change" in text and "30 ms: resnet18 openvino" in text
            and "took 5.00 then 6.00 ms (20.0% slower)" in text)
