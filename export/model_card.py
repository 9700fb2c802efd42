"""MODEL_CARD.md of a bundle, in the sections of Mitchell et al., *Model Cards for Model Reporting* (FAT* 2019),
written from the bundle's model.json alone: every figure in the card is a value of that record, and a figure
the record lacks is said to be missing, never filled in."""

from __future__ import annotations

import math
from typing import Any

SECTIONS = ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations")
METRIC_NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "sensitivity": "sensitivity",
                "specificity": "specificity", "f1": "F1", "accuracy": "accuracy", "ppv": "precision (PPV)",
                "precision": "precision (PPV)"}
METHOD_NAMES = {"youden": "Youden's J (sensitivity + specificity - 1, largest)"}


def fmt(x: Any, digits: int = 3) -> str:
    """A number as the card prints it (``n/a`` when absent or not finite)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return str(x) if isinstance(x, int) else f"{x:.{digits}f}"


def with_ci(m: dict[str, Any]) -> str:
    ci = m.get("ci95") or [None, None]
    return f"{fmt(m.get('value'))} (95% CI {fmt(ci[0])}-{fmt(ci[1])})"


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    return [f"| {METRIC_NAMES.get(k, k)} | {with_ci(v)} |" for k, v in metrics.items() if isinstance(v, dict)]


def _counts(split: dict[str, Any], side: str) -> str:
    c = (split.get("counts") or {}).get(side) or {}
    return (f"{c.get('images', 'n/a')} images of {c.get('patients', 'n/a')} patients "
            f"({c.get('NORMAL', 'n/a')} NORMAL, {c.get('PNEUMONIA', 'n/a')} PNEUMONIA)")


def _details(d: dict[str, Any]) -> list[str]:
    m, run, art, pre = d["model"], d["source_run"], d["artifact"], d["preprocess"]
    return [
        f"- **Model:** {m['backbone']} ({m.get('timm_id') or 'timm'}), one logit for PNEUMONIA; exported as "
        f"{m['format']} {m['precision']}, run with {m['runtime']}. Id `{m['id']}`.",
        f"- **File:** `{art['file']}` ({fmt(art.get('bytes'))} bytes), sha256 `{art['sha256']}`.",
        f"- **Initialisation:** {run.get('init') or 'not recorded'}; {fmt(run.get('epochs_run'))} epochs run, "
        f"weights of epoch {fmt(run.get('best_epoch'))} kept (best validation ROC-AUC). Loss: "
        f"{(run.get('loss') or {}).get('name', 'n/a')}.",
        f"- **Input:** {pre['size']} x {pre['size']} px, {pre['channels']} channels: 8-bit grayscale, resized "
        f"bilinearly without keeping the aspect ratio, repeated to the channels, normalised with mean "
        f"{pre['mean']} and std {pre['std']} (`predict.py` does this; see model.json).",
        f"- **Output:** {d['output']}.",
        f"- **Source run:** `{run.get('name')}` (run.json sha256 `{str(run.get('run_hash'))[:16]}`), split "
        f"`{run.get('split_hash')}`.",
        "- **Libraries:** " + ", ".join(f"{k} {v}" for k, v in sorted((d.get("versions") or {}).items())) + ".",
        "- **License:** MIT (the cxr-edge code); the weights inherit the terms of the data they were trained on.",
    ]


def _intended_use(d: dict[str, Any]) -> list[str]:
    return [
        "**This is a research tool, not a medical device.** It has not been cleared or approved by any regulator and "
        "must not be used to diagnose, triage or make any clinical decision.",
        "",
        "- **Intended:** research on chest X-ray classifiers at the edge: comparing backbones, formats and "
        "precisions; studying calibration, shift and explanations; teaching.",
        "- **Users:** researchers and engineers who can check its outputs against labelled data.",
        "- **Out of scope:** any use on patients; images other than frontal chest radiographs; populations and "
        "machines unlike the training data (see Factors) without a local evaluation; reading the Grad-CAM "
        "heatmaps as localisation of disease.",
    ]


def _factors(d: dict[str, Any]) -> list[str]:
    data = d["source_run"].get("data") or {}
    return [
        f"- Trained on `{data.get('source') or 'n/a'}`" + (f" ({data['kind']})" if data.get("kind") else "")
        + ". Its figures hold for images like those: the patient group (age), scanner, projection and exposure, "
        "and the prevalence of pneumonia of that set.",
        "- No subgroup (age, sex, site, device) figures were recorded; performance across such groups is unknown.",
        "- The resize to a square ignores the aspect ratio, as in training; a radiograph framed differently from "
        "the training images is a shift.",
    ]


def _metrics(d: dict[str, Any]) -> list[str]:
    t = d["threshold"]
    lines = ["- ROC-AUC and PR-AUC (threshold-free); sensitivity, specificity, F1, accuracy and PPV at the "
             "bundle's threshold; each with a bootstrap 95% confidence interval (resampled per class).",
             f"- **Threshold {fmt(t['value'], 4)}**, " + _threshold_words(t) + "."]
    if t.get("chosen_on") == "site sample":
        lines.append(f"- The validation threshold of the source run was {fmt(t.get('validation_threshold'), 4)}.")
    lines.append("- Quantized and converted models are compared with their FP32 PyTorch model on the same images: "
                 "largest probability change, decision agreement and ROC-AUC change.")
    return lines


def _threshold_words(t: dict[str, Any]) -> str:
    if t.get("chosen_on") == "site sample":
        target = f" for a sensitivity of at least {fmt(t['target_sensitivity'])}" if t.get("target_sensitivity") \
            is not None else ""
        return (f"chosen on the site's own sample of {t.get('n_images')} images{target} "
                f"(`{t.get('source_file')}`), not on the training data's validation side")
    method = METHOD_NAMES.get(str(t.get("method")), t.get("method"))
    return f"chosen on the validation side ({fmt(t.get('n_images'))} images) by {method}, never on test"


def _eval_data(d: dict[str, Any]) -> list[str]:
    run, test = d["source_run"], d["figures"].get("test")
    split = run.get("split") or {}
    lines = [f"- Validation side of split `{run.get('split_hash')}`: {_counts(split, 'val')}.",
             f"- Test side of the same split: {_counts(split, 'test')}"
             + (f"; the test figures below were measured on {fmt(test.get('n'))} of them "
                f"({fmt(test.get('n_pos'))} PNEUMONIA)." if test else "; no test figures were recorded for this "
                "artifact (package with --results).")]
    ext = d.get("external_evaluation")
    if ext:
        s = ext.get("summary") or {}
        lines.append(f"- External evaluation `{ext['file']}`: data {s.get('data', 'not named')}, "
                     f"{s.get('n_images', 'n/a')} images.")
    return lines


def _train_data(d: dict[str, Any]) -> list[str]:
    run = d["source_run"]
    split = run.get("split") or {}
    return [f"- Training side of split `{run.get('split_hash')}` ({split.get('method')} split, seed "
            f"{split.get('seed')}, no patient on two sides): {_counts(split, 'train')}.",
            f"- Training settings: {run.get('config') or 'not recorded'} at {run.get('size')} px."]


def _quantitative(d: dict[str, Any]) -> list[str]:
    f = d["figures"]
    out = []
    if f.get("test"):
        out += ["**Test side** (at the threshold recorded with the benchmark, "
                f"{fmt(f['test'].get('threshold'), 4)}):", "", "| metric | value |", "|---|---|",
                *_metric_rows(f["test"]["metrics"]), ""]
    else:
        out += ["No test figures are recorded for this artifact.", ""]
    val = f.get("validation")
    if val:
        out += [f"**Validation side** (PyTorch FP32 model, {val.get('n')} images; the threshold was chosen here, so "
                "these figures are optimistic):", "", "| metric | value |", "|---|---|",
                *_metric_rows(val.get("metrics") or {}), ""]
    out += _latency(f.get("latency")) + _quantization(f.get("quantization")) + _fid(f.get("explanation_fidelity"))
    out += _external(d.get("external_evaluation"))
    return out


def _latency(lat: dict[str, Any] | None) -> list[str]:
    if not lat:
        return ["No latency was recorded for this artifact.", ""]
    m = lat.get("machine") or {}
    rows = [f"| {b} | {fmt(v.get('p50_ms'), 2)} | {fmt(v.get('p99_ms'), 2)} | {fmt(v.get('images_per_s'), 1)} |"
            for b, v in lat["batches"].items()]
    return [f"**Latency** ({lat.get('runtime')}, {fmt(lat.get('threads'))} threads, on {m.get('cpu') or 'n/a'} with "
            f"{fmt(m.get('logical_cores'))} logical cores; another machine differs):", "",
            "| batch | p50 ms | p99 ms | images/s |", "|---|---|---|---|", *rows, ""]


def _quantization(q: dict[str, Any] | None) -> list[str]:
    if not q:
        return []
    out = [f"**Change against {q['against']}:**", ""]
    v, t = q.get("validation"), q.get("test")
    if v:
        out.append(f"- validation ({fmt(v.get('n'))} images): largest probability change "
                   f"{fmt(v.get('max_abs_prob'), 4)}, decision agreement {fmt(v.get('agreement'))}, ROC-AUC "
                   f"{fmt(v.get('val_auc_reference'))} -> {fmt(v.get('val_auc'))}.")
    if t:
        out.append(f"- test: largest probability change {fmt(t.get('max_abs_prob'), 4)}, decision agreement "
                   f"{fmt(t.get('agreement'))}, ROC-AUC change {fmt(t.get('auc_change'), 4)}.")
    return out + [""]


def _fid(fid: dict[str, Any] | None) -> list[str]:
    if not fid:
        return []
    parts = ", ".join(f"{k} {fmt(v) if not isinstance(v, bool) else v}" for k, v in fid.items())
    return [f"**Explanation fidelity** (Grad-CAM of the FP32 model, from the benchmark): {parts}.", ""]


def _external(ext: dict[str, Any] | None) -> list[str]:
    if not ext:
        return []
    s = ext.get("summary") or {}
    out = [f"**External evaluation** (`{ext['file']}`, stored verbatim in model.json):", ""]
    if s.get("metrics"):
        out += ["| metric | value |", "|---|---|", *_metric_rows(s["metrics"]), ""]
    if s.get("shift"):
        out += [f"Shift: {s['shift']}", ""]
    return out


def _ethics(d: dict[str, Any]) -> list[str]:
    return ["- A wrong NORMAL can delay care and a wrong PNEUMONIA can lead to needless treatment; the model's "
            "errors are not uniformly distributed and were not measured per subgroup.",
            "- Public chest X-ray sets carry label noise (labels mined from reports) and site and age bias.",
            "- Grad-CAM heatmaps show where the model's evidence lies, not where disease is, and can look plausible "
            "while the model relies on artefacts (markers, text, borders)."]


def _caveats(d: dict[str, Any]) -> list[str]:
    lines = ["- Evaluate on your own labelled images before any conclusion (`cxr-edge evaluate --data`), and choose "
             "the threshold there for the sensitivity you need.",
             "- The confidence intervals are wide on small test sides; overlapping intervals mean no measured "
             "difference.",
             "- Feed the model only through `predict.py` (or `cxr-edge predict`): another resize, colour handling "
             "or normalisation changes its outputs."]
    if d["model"]["precision"] != "fp32":
        lines.append(f"- This is an {d['model']['precision'].upper()} model: its outputs differ from the FP32 model's "
                     "by the "
                     "figures above, and its heatmaps (from the FP32 model) may not show its own evidence.")
    if "scratch" in str(d["source_run"].get("init") or ""):
        lines.append("- Trained from scratch (no ImageNet weights): expect it to generalise worse than a "
                     "pretrained model on data unlike its training set.")
    return lines


def model_card(d: dict[str, Any]) -> str:
    """MODEL_CARD.md text of a bundle's model.json ``d``."""
    m = d["model"]
    parts = [f"# Model card: {m['backbone']} {m['format']} {m['precision']} (cxr-edge)", "",
             "Pneumonia vs normal on chest radiographs. Written by `cxr-edge package` from model.json; every "
             "number below is a value of that record.", ""]
    bodies = (_details, _intended_use, _factors, _metrics, _eval_data, _train_data, _quantitative, _ethics, _caveats)
    for title, body in zip(SECTIONS, bodies):
        parts += [f"## {title}", "", *body(d), ""]
    return "\n".join(parts).rstrip() + "\n"
