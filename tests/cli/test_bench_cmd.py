"""`cxr-edge bench`, `table` and `recommend` as a user meets them."""

import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
FAST = ["--batches", "1,2", "--budget-s", "0.1", "--min-iters", "2", "--warmup", "1", "--n-boot", "20",
        "--threads", "2", "--no-progress", "--fidelity-n", "2", "--fidelity-steps", "4"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_names_the_options():
    r = invoke("bench", "--help")
    assert r.exit_code == 0
    for option in ("--out", "--device", "--batches", "--budget-s", "--min-iters", "--threads", "--compile", "--force"):
        assert option in r.output


def test_bench_table_recommend_and_no_silent_overwrite(clean_artifacts, tmp_path):
    out = tmp_path / "res"
    r = invoke("bench", clean_artifacts, "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} >= {"results.json", "table.csv", "table.md", "pareto.png"}
    assert "4 ok, 0 skipped, 0 failed" in r.output and "10 ms: resnet18" in r.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 4
    assert all(0 <= r["deletion_auc"] <= 1 and isinstance(r["sanity_ok"], bool) for r in rows)  # fidelity columns
    assert [r["cam_agreement"] is not None for r in rows] == [r["precision"] == "int8" for r in rows]

    again = invoke("bench", clean_artifacts, "--out", out, *FAST)
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output

    t = invoke("table", out, "--all")
    assert t.exit_code == 0 and "ROC-AUC (95% CI)" in t.output and "CPU:" in t.output
    assert "onnxruntime CPU" in t.output

    rec = invoke("recommend", out, "--budget-ms", 1e6)
    assert rec.exit_code == 0 and rec.output.startswith("Recommended on cpu at batch 1: resnet18")
    none = invoke("recommend", out, "--budget-ms", 1e-6)
    assert none.exit_code == 1 and "No artifact fits" in none.output


def test_table_fits_100_columns_and_shows_the_rest_on_request(tmp_path):
    """The default view (the end of `just demo`) fits 100 columns in a pipe; --all and --columns give the rest."""
    from bench.results_file import write_results
    from tests.bench.test_report import doc_of, wide_rows

    write_results(tmp_path, doc_of(wide_rows()))
    t = invoke("table", tmp_path)
    assert t.exit_code == 0, t.output
    assert max(len(line) for line in t.output.splitlines()) <= 100 and "…" not in t.output
    assert "Pareto-optimal" in t.output and "  10 ms: " in t.output and "100 ms: " in t.output
    assert f"Full table: {tmp_path / 'table.md'}" in t.output and "--all" in t.output
    assert "no GPU" not in t.output and "CPU:" not in t.output
    every = invoke("table", tmp_path, "--all")
    assert every.exit_code == 0 and "skipped [1]" in every.output and "[1] no GPU" in every.output
    assert "CPU: test cpu" in every.output and "resnet50" in every.output and "del AUC" in every.output
    picked = invoke("table", tmp_path, "--columns", "backbone,mem,deletion_auc", "--all")
    header = next(line for line in picked.output.splitlines() if line.lstrip().startswith("backbone"))
    assert header.split() == ["backbone", "mem", "MiB", "del", "AUC"]
    bad = invoke("table", tmp_path, "--columns", "backbone,nope")
    assert bad.exit_code == 2 and "nope is not a column" in bad.output and "Traceback" not in bad.output


def test_bench_exits_non_zero_when_no_row_is_ok_but_writes_its_results(clean_artifacts, tmp_path):
    import shutil

    from core import io

    art = tmp_path / "art"
    shutil.copytree(clean_artifacts, art)
    manifest = json.loads((art / "manifest.json").read_text())
    gone = [{**r, "source_run": str(tmp_path / "gone")} for r in manifest["artifacts"]]
    io.write_json(art / "manifest.json", {**manifest, "artifacts": gone})
    out = tmp_path / "res"
    r = invoke("bench", art, "--out", out, *FAST)
    assert r.exit_code == 1, r.output
    assert "no row is ok (4 failed, 0 skipped)" in " ".join(r.output.split()) and "Traceback" not in r.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 4 and all(row["status"] == "failed" for row in rows)
    assert (out / "table.md").is_file()


def test_bad_input_is_one_clear_line(tmp_path):
    r = invoke("bench", tmp_path, "--out", tmp_path / "res", "--batches", "1,x")
    assert r.exit_code == 2 and "--batches '1,x'" in r.output and "Traceback" not in r.output
    r = invoke("bench", tmp_path, "--out", tmp_path / "res")
    assert r.exit_code == 2 and "manifest.json does not exist" in r.output
    r = invoke("table", tmp_path / "nothing")
    assert r.exit_code == 2 and "cxr-edge bench" in r.output


def test_fidelity_of_a_run_and_of_its_artifacts(bench_run, clean_artifacts, tmp_path):
    """`cxr-edge fidelity` as a user runs it: a run (with its per-phase progress bar) and an export folder."""
    out = tmp_path / "fid.json"
    r = invoke("fidelity", bench_run.path, "--out", out, "--n", "2", "--steps", "4", "--no-road")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    (res,) = doc["runs"]
    assert res["backbone"] == "resnet18" and res["n_images"] == 2 and "sanity" in res and "road" not in res
    assert "resnet18: done" in r.output  # the progress bar ends on the run's last phase
    r = invoke("fidelity", clean_artifacts, "--out", out, "--n", "2", "--steps", "4", "--no-progress")
    assert r.exit_code == 0, r.output
    assert {a["precision"] for a in json.loads(out.read_text())["artifacts"]} == {"fp32", "fp16", "int8"}
    bad = invoke("fidelity", bench_run.path, "--layer", "resnet18=nope", "--n", "2", "--no-progress")
    assert bad.exit_code == 2 and "nope" in bad.output


def test_fidelity_layer_auto_records_its_choice(bench_run, tmp_path):
    out = tmp_path / "fid.json"
    r = invoke("fidelity", bench_run.path, "--out", out, "--n", "3", "--steps", "4", "--no-road", "--layer", "auto")
    assert r.exit_code == 0, r.output
    (res,) = json.loads(out.read_text())["runs"]
    sel = res["layer_selection"]
    assert res["layer"] == sel["layer"] and sel["side"] == "val" and len(sel["candidates"]) == 3
    assert f"resnet18: --layer auto chose gradcam at {sel['layer']} on 3 val images" in " ".join(r.output.split())
    assert ("warning: resnet18: " in " ".join(r.output.split())) == (sel["warning"] is not None)
    r = invoke("fidelity", bench_run.path, "--out", out, "--n", "3", "--steps", "4", "--no-road", "--method", "auto",
               "--no-progress")
    assert r.exit_code == 0, r.output
    (res,) = json.loads(out.read_text())["runs"]
    sel = res["layer_selection"]
    assert ({c["method"] for c in sel["candidates"]} == {"hirescam", "xgradcam", "gradcam"}
            and len(sel["candidates"]) == 9)
    assert (res["method"], res["layer"]) == (sel["method"], sel["layer"])
    bad = invoke("fidelity", bench_run.path, "--method", "auto", "--layer", "resnet18=layer3", "--no-progress")
    assert bad.exit_code == 2 and "leave out --layer" in bad.output
    cams = tmp_path / "cams"  # the gradcam command takes the choice over
    r = invoke("gradcam", bench_run.path, "--out", cams, "--n", "2", "--choices", out, "--no-progress")
    assert r.exit_code == 0, r.output
    (cam,) = json.loads((cams / "gradcam.json").read_text())["runs"]
    assert (cam["method"], cam["layer"]) == (sel["method"], sel["layer"])
    bad = invoke("gradcam", bench_run.path, "--out", cams, "--choices", cams / "gradcam.json", "--no-progress")
    assert bad.exit_code == 2 and "no run there was measured with --method auto" in " ".join(bad.output.split())
    bad = invoke("gradcam", bench_run.path, "--out", cams, "--choices", cams / "contact_sheet.png", "--no-progress")
    assert bad.exit_code == 2 and "not a fidelity.json" in " ".join(bad.output.split())

    bad = invoke("fidelity", bench_run.path, "--layer", "auto", "--select-split", "test", "--no-progress")
    assert bad.exit_code == 2 and "use val" in bad.output
    bad = invoke("fidelity", bench_run.path, "--layer", "auto", "--split", "val", "--no-progress")
    assert bad.exit_code == 2 and "chosen on the images it is judged on" in " ".join(bad.output.split())
    bad = invoke("gradcam", bench_run.path, "--layer", "auto", "--out", tmp_path / "cams", "--no-progress")
    assert bad.exit_code == 2 and "cxr-edge fidelity RUNS --layer auto" in bad.output


def test_fidelity_method_auto_refuses_export_folders(bench_run, clean_artifacts):
    bad = invoke("fidelity", bench_run.path, clean_artifacts, "--method", "auto", "--no-progress")
    assert bad.exit_code == 2 and "applies to runs only" in bad.output
