"""The harness-overhead table: our predict() against the runtimes' own tools, per backbone, at batch 1.

    python tools/harness_overhead.py ARTIFACTS [--threads 2] [--blocks 6] [--backbones resnet18,...] [--json F]

For each backbone of ARTIFACTS/manifest.json, its ONNX INT8 and OpenVINO INT8 artifacts (status ok) are timed by
:mod:`bench.overhead`: ONNX against a bare ``session.run`` loop, OpenVINO against ``benchmark_app`` (and a bare
``request.infer()`` loop in this process), alternated in short blocks. Prints one Markdown table (ours, theirs,
the median ratio of neighbouring blocks and its range, whether it meets the goal of +5% or +0.05 ms).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(artifacts: Path, threads: int, blocks: int, backbones: set[str] | None) -> list[dict[str, Any]]:
    """One row per (backbone, format) of the INT8 ONNX and OpenVINO artifacts in the manifest."""
    from bench import overhead
    from export.manifest import read_manifest

    rows = []
    for rec in read_manifest(artifacts):
        if rec.get("precision") != "int8" or rec.get("format") not in ("onnx", "openvino") or rec.get("status") != "ok":
            continue
        if backbones and rec["backbone"] not in backbones:
            continue
        pre = rec.get("preprocess") or {}
        size, channels = int(pre["size"]), int(pre.get("channels", 3))
        path = artifacts / rec["path"]
        print(f"timing {rec['backbone']} {rec['format']} int8 ...", file=sys.stderr, flush=True)
        if rec["format"] == "onnx":
            fig = overhead.onnx_overhead(path, threads, size, channels)
        else:
            fig = overhead.openvino_overhead(path, threads, size, channels, blocks=blocks)
        rows.append({"backbone": rec["backbone"], "format": rec["format"], "size": size, **fig})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table (ms at batch 1)."""
    lines = ["| backbone | format | ours p50 ms | runtime's tool ms | ours / tool (range) | goal met | "
             "in-process bare loop: ours / theirs | same calls: wall - request.latency ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        inner, counter = r.get("in_process"), r.get("runtime_counter")
        bare = (f"{inner['ratio']:.3f} ({inner['ours_ms']:.3f} / {inner['theirs_ms']:.3f} ms)" if inner
                else "same as tool")
        added = (f"{counter['added_ms']:.3f} ({counter['ours_ms']:.3f} / {counter['theirs_ms']:.3f})" if counter
                 else "")
        tool = "benchmark_app" if r["format"] == "openvino" else "session.run"
        lines.append(f"| {r['backbone']} | {r['format']} | {r['ours_ms']:.3f} | {r['theirs_ms']:.3f} ({tool}) | "
                     f"{r['ratio']:.3f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
                     f"{'yes' if r['within_goal'] else 'no'} | {bare} | {added} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, help="artifacts folder holding manifest.json")
    parser.add_argument("--threads", type=int, default=2, help="threads of both loops (default 2)")
    parser.add_argument("--blocks", type=int, default=6,
                        help="alternated benchmark_app blocks per OpenVINO artifact (default 6)")
    parser.add_argument("--backbones", default="", help="comma-separated backbones (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not (args.artifacts / "manifest.json").is_file():
        parser.error(f"{args.artifacts / 'manifest.json'} does not exist; "
                     "pass an artifacts folder from cxr-edge export")
    rows = measure(args.artifacts, args.threads, args.blocks, {b for b in args.backbones.split(",") if b} or None)
    print(table(rows))
    print(f"\n{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    if args.json:
        from core.io import write_json

        write_json(args.json, {"threads": args.threads, "blocks": args.blocks, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
