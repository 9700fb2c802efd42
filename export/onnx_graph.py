"""What an ONNX graph holds, counted, and the checks that an FP16 or INT8 build is what was asked for.

Split from :mod:`export.onnx`, which re-exports these names.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import numpy as np

from export.base import ExportError, PrecisionError

FP16_MAX_FP32_SHARE = 0.05  # share of float weights allowed to stay FP32 (ops the converter blocks)


def describe(model) -> dict[str, Any]:
    """Counts that say what a graph is: nodes, Q/DQ nodes, initializers by element type and elements."""
    import onnx

    ops = Counter(n.op_type for n in model.graph.node)
    dq_inputs = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    by_type: Counter = Counter()
    elements: Counter = Counter()
    q_weights = q_weight_elements = 0
    for init in model.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        n = int(np.prod(init.dims)) if init.dims else 1
        by_type[name] += 1
        elements[name] += n
        if name in ("int8", "uint8") and init.name in dq_inputs and len(init.dims) >= 2:
            q_weights, q_weight_elements = q_weights + 1, q_weight_elements + n
    return {"nodes": len(model.graph.node), "quantize_nodes": ops.get("QuantizeLinear", 0),
            "dequantize_nodes": ops.get("DequantizeLinear", 0), "initializers": dict(by_type),
            "initializer_elements": dict(elements), "int8_weights": q_weights,
            "int8_weight_elements": q_weight_elements, "op_types": dict(sorted(ops.items()))}


def check_fp16(facts: dict[str, Any]) -> None:
    fp16 = facts["initializer_elements"].get("float16", 0)
    fp32 = facts["initializer_elements"].get("float32", 0)
    if fp16 == 0:
        raise PrecisionError("the FP16 model has no FP16 weights; the converter changed nothing")
    share = fp32 / (fp16 + fp32)
    facts["fp32_weight_share"] = round(share, 6)
    if share > FP16_MAX_FP32_SHARE:
        raise PrecisionError(f"{share:.1%} of the FP16 model's float weights are still FP32 "
                             f"(allowed {FP16_MAX_FP32_SHARE:.0%})")


def check_int8(facts: dict[str, Any]) -> None:
    if not (facts["quantize_nodes"] and facts["dequantize_nodes"]):
        raise PrecisionError(f"the INT8 model has {facts['quantize_nodes']} QuantizeLinear and "
                             f"{facts['dequantize_nodes']} DequantizeLinear nodes; quantization did nothing")
    if facts["int8_weights"] == 0:
        raise PrecisionError("the INT8 model has no INT8 weights; every weight stayed in floating point")


def toposort(graph) -> None:
    """Reorder ``graph.node`` so that every node comes after the nodes that produce its inputs (Kahn)."""
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    waiting = [len(d) for d in deps]
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise ExportError("the graph has a cycle; it cannot be sorted")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
