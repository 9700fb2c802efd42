"""docs/RESULTS.md from a pipeline's output files: nothing in it is typed in by hand.

:func:`write_results_doc` reads the benchmark's ``results.json`` (rows, environment, method), the
export manifest it names (INT8 validation ROC-AUC change per artifact), the run folders (training
settings, validation ROC-AUC, times) and, when given, the Grad-CAM contact sheet and the fidelity
JSON; it copies the result files beside the Markdown, into a folder named after it (``docs/RESULTS.md`` ->
``docs/RESULTS/``), so the document and its figures travel together, and writes the document atomically.
Every statement about how the numbers were made (initialisation, data set and its images per side, the
devices and their names, seeds, threads, epochs, sizes) is read from the records too.

The only figures not computed here are the paper's, quoted in :data:`PAPER` with their source, so
that ours can stand beside them.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

from bench.choice import choice_text
from bench.compare import changed_picks, factor_words
from bench.recommend import BUDGETS_MS, describe, recommend
from bench.report import markdown as table_markdown
from core import io

# Shahi & Bagale (arXiv 2511.00456): ImageNet-pretrained, 224 px, up to 10 epochs, test side of the
# paper's own patient-wise split of all 5,856 Kermany images; accuracy / ROC-AUC per backbone from its
# code's published notebooks (DenseNet-121 not reported).
PAPER = {
    "resnet18": (0.981, 0.997),
    "resnet50": (0.965, 0.995),
    "densenet121": (None, None),
    "efficientnet_b0": (0.979, 0.997),
    "mobilenetv2_100": (0.971, 0.995),
    "mobilenetv3_large_100": (0.974, 0.997),
    "vit_base_patch16_224": (0.974, 0.995),
}
PAPER_SOURCE = ("Shahi & Bagale, arXiv 2511.00456: ImageNet-pretrained, 224 px, up to 10 epochs, test side of the "
                "paper's own patient-wise split of all 5,856 images (accuracy / ROC-AUC from its code's notebooks)")
CNNS = ("resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenetv2_100", "mobilenetv3_large_100")


def _f(x: Any, fmt: str = ".3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else "n/a"


def _value(x: Any) -> Any:
    """A metric from a run record: a number, or ``{"value": v, "ci95": [...]}``."""
    return x.get("value") if isinstance(x, dict) else x


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; run the stage that writes it first (see `just kermany`)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun the stage that writes it") from None


def _results(results_dir: Path) -> dict[str, Any]:
    """The benchmark's results.json in ``results_dir``, checked to be one."""
    from bench.results_file import RESULTS_FORMAT

    if results_dir.is_file():
        raise ValueError(f"{results_dir} is a file; give the folder `cxr-edge bench` wrote (it holds results.json)")
    path = results_dir / "results.json"
    _load(path)  # a missing file or broken JSON: say which stage writes it
    return io.read_format_json(path, RESULTS_FORMAT, f"write it again with `cxr-edge bench ARTIFACTS --out "
                                                     f"{results_dir} --force`")


def _runs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, info in doc.get("backbones", {}).items():
        run = info.get("run")
        if run and (Path(run) / "run.json").is_file():
            out[name] = json.loads((Path(run) / "run.json").read_text())
    return out


def _manifest(doc: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(doc.get("artifacts", "")) / "manifest.json"
    return json.loads(path.read_text()).get("artifacts", []) if path.is_file() else []


# ------------------------------------------------------------------------- statements from the records


def _joined(values: list[Any]) -> str:
    """``a``, ``a and b`` or ``a, b and c`` of the distinct values, in order."""
    items = [str(v) for v in dict.fromkeys(values)]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else "n/a"


def _device(doc: dict[str, Any]) -> str:
    """The benchmark's device, ``cpu`` or ``cuda``, from its settings (else its rows)."""
    device = doc.get("environment", {}).get("settings", {}).get("device") or next(
        (r.get("device") for r in doc.get("rows", []) if r.get("device")), "cpu")
    return "cuda" if str(device).startswith("cuda") else "cpu"


def bench_device(doc: dict[str, Any]) -> str:
    """Where the benchmark ran, named from results.json: ``the GPU NVIDIA H100`` or ``the CPU AMD EPYC (2
    logical cores, 1 thread)``."""
    env = doc.get("environment", {})
    settings = env.get("settings", {})
    if _device(doc) == "cuda":
        return f"the GPU {(env.get('gpu') or {}).get('name', 'n/a')}"
    cpu = env.get("cpu", {})
    threads = settings.get("threads_used")
    return (f"the CPU {cpu.get('model', 'n/a')} ({cpu.get('logical_cores', 'n/a')} logical cores"
            + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "") + ")")


def train_device(runs: dict[str, dict[str, Any]]) -> str:
    """Where the runs were trained, from their records: ``a GPU (NVIDIA H100)`` or ``the CPU (AMD EPYC, 2
    cores, 1 torch thread)``."""
    recs = list(runs.values())
    if not recs:
        return "n/a"
    if any(str(r.get("device", "")).startswith("cuda") for r in recs):
        on_gpu = [str(r.get("device", "")).startswith("cuda") for r in recs]
        names = [r.get("environment", {}).get("cuda") or "n/a" for r, gpu in zip(recs, on_gpu) if gpu]
        cpu_too = not all(on_gpu)
        return f"a GPU ({_joined(names)})" + (" and the CPU" if cpu_too else "")
    envs = [r.get("environment", {}) for r in recs]
    threads = _joined([e.get("torch_threads") for e in envs])
    return (f"the CPU ({_joined([e.get('cpu') for e in envs])}, {_joined([e.get('cpu_count') for e in envs])} cores, "
            f"{threads} torch thread{'s' if threads != '1' else ''})")


def init_words(runs: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """How the runs started, in words, and whether every one started from ImageNet weights."""
    cfgs = [r.get("config", {}) for r in runs.values()]
    pretrained = [bool(c.get("pretrained") or c.get("weights")) for c in cfgs]
    if pretrained and all(pretrained):
        return "every backbone starts from ImageNet weights, as in the paper", True
    if not any(pretrained):
        return "no ImageNet weights here (every backbone is trained from scratch)", False
    started = [n for n, flag in zip(runs, pretrained) if flag]
    return f"ImageNet weights for {_joined(started)} only; the others are trained from scratch", False


def data_words(runs: dict[str, dict[str, Any]]) -> str:
    """The data set and its images per side, from the runs' records."""
    first = next(iter(runs.values()), {})
    source = (first.get("data") or {}).get("source") or first.get("split", {}).get("source") or ""
    if isinstance(source, dict):  # a source record (core.split.Split.source_record): kind and path, no machine path
        if source.get("kind") == "synthetic":
            source = "the built-in synthetic set/manifest.csv"
        else:
            source = source.get("path") or ""
    path = Path(source)
    name = path.parent.name if path.suffix else path.name
    counts = first.get("split", {}).get("counts", {})
    total = sum(c.get("images", 0) for c in counts.values())
    method = first.get("split", {}).get("method")
    how = "a patient-wise split" if method == "patient" else "the data set's own train/val/test folders"
    sides = ", ".join(f"{side} {c.get('images')}" for side, c in counts.items())
    return f"{how} of {name or 'n/a'} ({total:,} images: {sides})"


def differences_text(doc: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    """What differs from the paper's setting, every part read from the records."""
    init, pretrained = init_words(runs)
    cfgs = [r.get("config", {}) for r in runs.values()]
    sizes = [c.get("size") for c in cfgs]
    epochs = [r.get("epochs_run") for r in runs.values()]
    size_text = ("224 px images, as in the paper" if set(sizes) == {224}
                 else f"{_joined(sizes)} px images against the paper's 224")
    text = (f"What differs: {init}; {size_text}; {_joined(epochs)} epoch(s) against the paper's up to 10 (see the "
            f"training table); {data_words(runs)} against the paper's split of all 5,856 images; trained on "
            f"{train_device(runs)}.")
    if not pretrained:
        text += (" The gap to the paper may be mostly the missing pretraining, a guess this run does not test; "
                 "train with ImageNet weights (below) to compare like with like.")
    return text


def reproduce_line(recipe: str, doc: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    cfgs = [r.get("config", {}) for r in runs.values()]
    minutes = sum(r.get("wall_seconds") or 0 for r in runs.values()) / 60
    return (f"- This page: `{recipe}` (training took {minutes:.0f} min in all on {train_device(runs)}; benchmarked "
            f"on {bench_device(doc)}; resumable: finished runs and artifacts are kept). Training is seeded (seed "
            f"{_joined([c.get('seed') for c in cfgs])}), so the accuracy figures should repeat on the same machine "
            "and thread count. ")


def training_section(doc: dict[str, Any], runs: dict[str, dict[str, Any]]) -> list[str]:
    rows = {r["backbone"]: r for r in doc["rows"] if r.get("format") == "pytorch" and r.get("precision") == "fp32"
            and r.get("status") == "ok"}
    out = ["| backbone | init | size | epochs (best) | train time | val ROC-AUC | test ROC-AUC (95% CI) | "
           "test accuracy | sensitivity | specificity | F1 | threshold (val) |", "|" + "---|" * 12]
    for name, rec in runs.items():
        r = rows.get(name, {})
        cfg = rec.get("config", {})
        out.append(f"| {name} | {rec.get('init', 'n/a')} | {cfg.get('size')} px | {rec.get('epochs_run')} of "
                   f"{cfg.get('epochs')} ({rec.get('best_epoch')}) | "
                   f"{_f(rec.get('wall_seconds', math.nan) / 60, '.1f')}"
                   f" min | {_f(_value(rec.get('val', {}).get('metrics', {}).get('roc_auc')))} | "
                   f"{_f(r.get('roc_auc'))} "
                   f"({_f(r.get('roc_auc_lo'))}-{_f(r.get('roc_auc_hi'))}) | {_f(r.get('accuracy'))} | "
                   f"{_f(r.get('sensitivity'))} | {_f(r.get('specificity'))} | {_f(r.get('f1'))} | "
                   f"{_f(rec.get('threshold', {}).get('threshold'), '.4f')} |")
    return out


def latency_repeatability(doc: dict[str, Any], bound: float = 0.10) -> str:
    """What the ± band of the p50 at batch 1 (the ``spread`` column) says, and how wide it was here, in words."""
    ok = [r for r in doc.get("rows", []) if r.get("status") == "ok"]
    spreads = [r["b1_spread"] for r in ok if r.get("b1_spread") is not None]
    if not spreads:
        return "Latency: no row has a band (one timing round)."
    rounds = doc.get("environment", {}).get("settings", {}).get("latency", {}).get("rounds", "several")
    text = (f"Each p50 carries a ± band: the 95% interval within which a repeat of the benchmark should find it on "
            f"this machine running at the speed it had, from the medians of {rounds} rounds timed one after another "
            f"(here {sum(1 for x in spreads if x <= bound)} of {len(spreads)} bands at batch 1 within ±{bound:.0%}; "
            f"median ±{statistics.median(spreads):.1%}, widest ±{max(spreads):.0%}); read a difference between two "
            f"rows smaller than their bands as noise.")
    rel = [r["b1_rel_spread"] for r in ok if r.get("b1_rel_spread") is not None]
    probe = [t["ms"] for t in doc.get("environment", {}).get("speed_probe", {}).get("in_turns", [])]
    if rel and probe:
        text += (f" A shared machine can also run slower or faster as a whole for an hour, which no band from one "
                 f"run can foresee; so each row is also stated relative to a speed probe (a fixed PyTorch "
                 f"convolution) timed in the same turns, {statistics.fmean(probe):.2f} ms in this run (column "
                 f"b1 / probe, median band ±{statistics.median(rel):.1%}): when another run's probe differs from this "
                 f"one by more than the bands, compare that column rather than the ms figures. The probe is one "
                 f"convolution, not these models: it tracks the machine's speed only roughly.")
    return text


def reproduction_text(rep: dict[str, Any]) -> str:
    """A `cxr-edge compare --json` file in words: did this run reproduce the previous run of the recipe?"""
    n = len(rep.get("rows", []))
    if not n:
        return f"Against the previous run of the recipe ({rep.get('a')}): no row in common."
    text = (f"**Against the previous run of the recipe** (`{rep.get('a')}`, compared by `cxr-edge compare`): "
            f"{rep.get('accuracy_identical')} of {n} rows have identical test accuracy figures")
    for s in rep.get("summary", []):
        if s.get("n"):
            text += (f"; p50 at batch {s['batch']}: {s['within_spread']} of {s['n']} rows moved by no more than their "
                     f"stated band and {s['within_bound']} within {s['bound']:.0%} (median change "
                     f"{s['median_change']:.1%}, largest {s['largest_change']:.0%}, {s['largest_row']})")
            if s.get("rel_n"):
                text += (f"; relative to the speed probe timed in the same turns {s['rel_within_spread']} of "
                         f"{s['rel_n']} within their stated band (median change {s['rel_median_change']:.1%}, "
                         f"largest {s['rel_largest_change']:.0%}, {s['rel_largest_row']})")
            if s.get("machine_factor") is not None:
                f = s["machine_factor"]
                text += (f": as a whole this run was {factor_words(f)}, and after "
                         f"that factor rows moved by a median {s['residual_median']:.1%} (largest "
                         f"{s['residual_largest']:.0%})"
                         + ("" if s.get("rank_spearman") is None else
                            f"; the rows' order kept a rank correlation of {s['rank_spearman']:.3f}"))
    pr = rep.get("probes") or {}
    if pr:
        f = pr["factor"]
        text += (f"; the speed probe (a fixed PyTorch convolution, "
                 f"{'timed in turns with the rows' if pr.get('in_turns') else 'before and after the timing'}) took "
                 f"{pr['a_ms']:.2f} then {pr['b_ms']:.2f} ms ({factor_words(f)})")
    c = rep.get("conclusions") or {}
    if c:
        text += (f". What to ship did {'not change' if c['pareto_same'] and c['picks_same'] else 'change'}: the "
                 f"Pareto-optimal artifacts are {'the same' if c['pareto_same'] else 'different'} and the picks under "
                 + ", ".join(f"{k}" for k in c["picks_a"]) + f" ms are {'the same' if c['picks_same'] else 'different'}"
                 + ("" if c["picks_same"] else " (" + "; ".join(changed_picks(c)) + ")"))
    if rep.get("differences"):
        text += "; settings that differ: " + "; ".join(rep["differences"])
    return text + "."


def paper_section(doc: dict[str, Any]) -> list[str]:
    rows = {r["backbone"]: r for r in doc["rows"] if r.get("format") == "pytorch" and r.get("precision") == "fp32"
            and r.get("status") == "ok"}
    out = ["| backbone | paper accuracy | paper ROC-AUC | ours accuracy | ours ROC-AUC (95% CI) |",
           "|---|---|---|---|---|"]
    for name, (acc, auc) in PAPER.items():
        r = rows.get(name, {})
        out.append(f"| {name} | {_f(acc)} | {_f(auc)} | {_f(r.get('accuracy'))} | {_f(r.get('roc_auc'))} "
                   f"({_f(r.get('roc_auc_lo'))}-{_f(r.get('roc_auc_hi'))}) |")
    return out


def int8_section(records: list[dict[str, Any]], budget: float = 0.005) -> list[str]:
    """Validation ROC-AUC change of every low-precision artifact against its PyTorch FP32 parent."""
    out = ["| backbone | format | precision | status | val ROC-AUC change | max abs prob diff | agreement | "
           f"within {budget} (CNN INT8) |", "|" + "---|" * 8]
    for rec in sorted(records, key=lambda r: (r.get("backbone", ""), r.get("format", ""), r.get("precision", ""))):
        if rec.get("precision") == "fp32":
            continue
        p = rec.get("parity") or {}
        change = p.get("auc_change")
        within = ""
        if rec.get("precision") == "int8" and rec.get("backbone") in CNNS and isinstance(change, (int, float)):
            within = "yes" if change >= -budget else f"no, by {-change - budget:.4f}"
        out.append(f"| {rec.get('backbone')} | {rec.get('format')} | {rec.get('precision')} | {rec.get('status')} | "
                   f"{_f(change, '+.4f')} | {_f(p.get('max_abs_prob'), '.4f')} | {_f(p.get('agreement'))} | {within} |")
    return out


def budget_section(doc: dict[str, Any], device: str = "cpu", batch: int = 1) -> list[str]:
    out = []
    for b in BUDGETS_MS:
        try:
            rec = recommend(doc, b, device=device, batch=batch)
        except ValueError as err:
            out.append(f"- **{b:g} ms**: {err}")
            continue
        out.append(f"- **{b:g} ms**: " + " ".join(rec.lines))
    return out


def pareto_section(doc: dict[str, Any], batch: int = 1) -> list[str]:
    front = [r for r in doc["rows"] if r.get("pareto_latency") and r.get("status") == "ok"]
    front.sort(key=lambda r: r.get(f"b{batch}_p50_ms", math.inf))
    return [f"- {describe(r, batch)}" for r in front] or ["- no row was timed"]


def fidelity_section(fid: dict[str, Any]) -> list[str]:
    """A table from the fidelity JSON: one row per entry of its ``rows`` (or per key of a mapping)."""
    rows = fid.get("rows") if isinstance(fid, dict) else None
    if rows is None and isinstance(fid, dict):
        rows = [{"name": k, **v} for k, v in fid.items() if isinstance(v, dict)]
    rows = rows or []
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and (isinstance(v, (int, float, bool, str)) or v is None) and not k.endswith("error"):
                keys.append(k)
    if not rows:
        return ["(the fidelity file holds no rows)"]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(_f(v) if isinstance(v, float) else ("n/a" if v is None else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_results_doc(results_dir: str | Path, out: str | Path, *, recipe: str, contact_sheet: str | Path | None = None,
                      fidelity: str | Path | None = None, title: str = "Results on the Kermany chest X-rays",
                      caption: str = "", reproduction: str | Path | None = None) -> Path:
    """Write ``out`` (Markdown) and copy the result files beside it, into a folder named after it
    (``docs/RESULTS.md`` -> ``docs/RESULTS/``), so that two pages never share or overwrite their files."""
    from bench.report import write_reports
    from bench.results_file import portable, relocate, resolved, write_results

    results_dir, out = Path(results_dir), Path(out)
    stored = _results(results_dir)  # checked to be a benchmark's results.json
    doc = resolved(stored, results_dir)  # its paths are relative to its folder
    assets = out.parent / out.stem  # beside the page, named after it: docs/RESULTS.md -> docs/RESULTS/
    assets.mkdir(parents=True, exist_ok=True)
    if assets.resolve() != results_dir.resolve():  # the copies name files relative to their own folder
        write_results(assets, relocate(stored, results_dir, assets))
        write_reports(doc, assets)
    rel = assets.relative_to(out.parent)
    sheet_md = []
    if contact_sheet:
        src = Path(contact_sheet)
        if not src.is_file():
            raise FileNotFoundError(f"contact sheet {src} not found; run `cxr-edge gradcam` first")
        io.write_atomic(assets / "contact_sheet.png", lambda p: shutil.copyfile(src, p))
        sheet_md = [f"![Grad-CAM contact sheet]({rel}/contact_sheet.png)", ""]
    fid_md = []
    if fidelity:
        fid = _load(Path(fidelity))
        io.write_atomic(assets / "fidelity.json", lambda p: shutil.copyfile(fidelity, p))
        fid_md = fidelity_section(fid) + [""]
    rep_md = []
    if reproduction:
        rep = _load(Path(reproduction))
        io.write_atomic(assets / "reproduction.json", lambda p: shutil.copyfile(reproduction, p))
        rep_md = ["- " + reproduction_text(rep) + f" Per row: [`{rel}/reproduction.json`]({rel}/reproduction.json)."]
    runs = _runs(doc)
    env = doc.get("environment", {})
    where = bench_device(doc)
    device = _device(doc)
    all_gpu_pretrained = bool(runs) and init_words(runs)[1] and train_device(runs).startswith("a GPU")
    split_hashes = sorted({info.get("split_hash") for info in doc.get("backbones", {}).values()
                           if info.get("split_hash")})
    first = next(iter(runs.values()), {})
    counts = first.get("split", {}).get("counts", {})
    lines = [f"# {title}", "",
             "Every figure below is read from the output files of one recipe run (copied to "
             f"[`{rel}/`]({rel}/)); nothing is typed in except the paper's figures, quoted with their source.", "",
             f"**How these numbers were obtained.** {caption}".rstrip(), "",
             f"- Recipe: `{recipe}`",
             f"- Data: `{first.get('data', {}).get('source', 'n/a')}`; "
             f"{'patient-wise' if first.get('split', {}).get('method') == 'patient' else 'official'} split "
             f"{', '.join(split_hashes) or 'n/a'} (seed {first.get('split', {}).get('seed')}): "
             + ", ".join(f"{s} {c.get('images')} images / {c.get('patients')} patients" for s, c in counts.items()),
             "- Thresholds chosen on the validation side (Youden's J); every test figure is on the test side.",
             f"- Benchmark: {doc.get('method', '')}",
             f"- Machine: {env.get('cpu', {}).get('model')} ({env.get('cpu', {}).get('logical_cores')} logical cores), "
             f"GPU: {(env.get('gpu') or {}).get('name', 'none')}; date {env.get('date')}; versions "
             + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()), "",
             "## Training", ""] + training_section(doc, runs) + [
             "", "## Beside the paper", "", PAPER_SOURCE + ".", ""] + paper_section(doc) + [
             "", differences_text(doc, runs), "",
             "## Reproduce", "",
             reproduce_line(recipe, doc, runs) + latency_repeatability(doc),
             ] + rep_md + ([] if all_gpu_pretrained else [
             "- The GPU variant, as the paper ran it: `just kermany size=224 epochs=10 vit_epochs=10 device=cuda "
             "weights=imagenet doc=docs/RESULTS-gpu.md` (ImageNet weights from timm's hub, so that machine needs to "
             "reach it; `cxr-edge train BACKBONE --weights FILE` takes a local file per backbone instead)."]) + [
             "", "## What to ship", "", f"Pareto-optimal on {where} (no other artifact has a higher ROC-AUC at "
             f"a lower p50 latency, batch 1; {choice_text(doc['rows'])}):", ""] + pareto_section(doc) + [
             "", f"Best artifact inside a latency budget (p50 at batch 1 on {where}; `cxr-edge recommend`):", ""
             ] + budget_section(doc, device=device) + [
             "", "![Pareto plot: test ROC-AUC against p50 latency and against bytes](" + f"{rel}/pareto.png)", "",
             "## Quantization: validation ROC-AUC change against FP32", "",
             "From the export manifest (validation side, at export time; the budget for the CNNs' INT8 is 0.005).", ""
             ] + int8_section(_manifest(doc)) + ["", "## Explanations", ""] + sheet_md + fid_md + [
             "## The full table", ""]
    table = table_markdown(portable(doc, out.parent)).splitlines()
    lines += [ln.replace("# Benchmark:", "### Benchmark:", 1) if ln.startswith("# ") else ln for ln in table]
    io.write_atomic(out, lambda p: p.write_text("\n".join(lines) + "\n"))
    return out
