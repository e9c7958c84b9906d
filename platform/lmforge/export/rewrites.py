"""Graph rewrites of a weight-only quantized ONNX model: exact, each a speed or size gain.

- :func:`merge_shared_input_matmuls`: q/k/v (gate/up) projections that read one input as one matmul;
- :func:`quantize_embeddings`: the embedding table as int8 blocks (``GatherBlockQuantized``);
- :func:`integer_kernel_with_offsets`: HQQ's float zero points as the integer kernel plus an offset term.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def _readers(graph) -> Counter:
    """How many nodes read each tensor: an initializer read once can be rewritten in place."""
    return Counter(name for node in graph.node for name in node.input)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def merge_shared_input_matmuls(model) -> int:
    """Merge the ``MatMulNBits`` nodes that read the same input with the same quantization (a layer's q, k
    and v; gate and up) into one node over the weights concatenated along N, then ``Split`` the result.
    Returns how many groups were merged.

    Same weights and arithmetic, so the outputs are bit-identical; one kernel call instead of three
    (two) shares the input's 8-bit quantization and the thread pool's start-up.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    named = Counter(node.name for node in graph.node)  # nodes are replaced by name: it must be unique
    readers = _readers(graph)  # weights are moved: only those read by their node alone
    groups: dict[tuple, list] = {}
    for node in graph.node:
        if (node.op_type == "MatMulNBits" and node.name and named[node.name] == 1
                and all(name in inits and readers[name] == 1 for name in node.input[1:])):
            attrs = tuple(sorted((k, v) for k, v in _attrs(node).items() if k != "N"))
            groups.setdefault((node.input[0], len(node.input), attrs), []).append(node)
    replacement: dict[str, list] = {}  # first member's name -> the merged node and its Split
    for (x, _, attrs), members in groups.items():
        if len(members) < 2:
            continue
        widths = [_attrs(m)["N"] for m in members]
        name = f"{members[0].name}/merged"
        tensors = [numpy_helper.from_array(np.concatenate([numpy_helper.to_array(inits[m.input[j]]) for m in members]),
                                           f"{name}/input_{j}") for j in range(1, len(members[0].input))]
        sizes = numpy_helper.from_array(np.array(widths, np.int64), f"{name}/split_sizes")
        for m in members:
            for j in range(1, len(m.input)):
                graph.initializer.remove(inits.pop(m.input[j]))
        graph.initializer.extend([*tensors, sizes])
        replacement[members[0].name] = [
            helper.make_node("MatMulNBits", [x, *(t.name for t in tensors)], [f"{name}/output"], name=name,
                             domain="com.microsoft", N=sum(widths), **dict(attrs)),
            helper.make_node("Split", [f"{name}/output", sizes.name], [m.output[0] for m in members],
                             name=f"{name}/split", axis=-1),
        ]
        for m in members[1:]:
            replacement[m.name] = []
    # The merged node takes the first member's place: its input is ready there, and every member's
    # consumers come after their member, so after the Split too.
    nodes = [new for node in graph.node for new in replacement.get(node.name, [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    return sum(1 for v in replacement.values() if v)


def quantize_embeddings(model, block_size: int = 32) -> int:
    """Store every embedding table (a ``Gather`` from a 2-D float initializer) as int8 in blocks of
    ``block_size`` along the hidden axis, gathered by onnxruntime's ``GatherBlockQuantized``. Returns how
    many were replaced.

    The fp32 table is most of a quantized model's file. Symmetric int8 with a scale per 32 values is
    llama.cpp's Q8_0, how GGUF files such as SmolLM2's store this table, so for them it is lossless; a
    decode step gathers one row, so speed is unchanged.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = _readers(graph)
    replaced = 0
    for i, node in enumerate(graph.node):
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if (table is None or readers[table.name] != 1 or len(table.dims) != 2 or table.dims[1] % block_size
                or table.data_type != onnx.TensorProto.FLOAT
                or any(a.name == "axis" and a.i != 0 for a in node.attribute)):
            continue
        weights = numpy_helper.to_array(table)
        blocks = weights.reshape(weights.shape[0], -1, block_size)
        scales = np.abs(blocks).max(axis=-1) / 127
        scales[scales == 0] = 1.0
        q = np.clip(np.round(blocks / scales[..., None]), -127, 127).astype(np.int16) + 128  # zero point 128
        new_inits = [numpy_helper.from_array(q.astype(np.uint8).reshape(weights.shape), f"{table.name}_int8"),
                     numpy_helper.from_array(scales.astype(np.float32), f"{table.name}_scales")]
        graph.node[i].CopyFrom(helper.make_node(
            "GatherBlockQuantized", [new_inits[0].name, node.input[1], new_inits[1].name], list(node.output),
            name=node.name, domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block_size, bits=8))
        graph.initializer.remove(table)
        graph.initializer.extend(new_inits)
        replaced += 1
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def integer_kernel_with_offsets(model, accuracy_level: int = 4):
    """Rewrite every ``MatMulNBits`` with float zero points (HQQ's) into the symmetric integer kernel plus
    an exact per-block offset term, so it runs on onnxruntime's fast int8-compute path.

    onnxruntime has no fast kernel for float zero points: it dequantizes the whole weight on every call,
    roughly ten times slower per decode step than this rewrite. The algebra, per output ``n``
    and block ``b`` of the input ``x``, with ``w = s (q - z)``::

        y_n = sum_b s_nb sum_{k in b} x_k (q_k - 8)  +  sum_b s_nb (8 - z_nb) X_b,   X_b = sum_{k in b} x_k

    The first term is ``MatMulNBits`` without zero points (its default zero point is 8); the second is a
    small matmul of the block sums ``X = x @ S`` (``S``: 0/1, ``[K, K/block]``, shared by the projections
    reading the same ``x``) with ``C = s (8 - z)``, ``[K/block, N]``. Same weights, same model; only
    the integer kernel's 8-bit activation rounding is new (as for int8).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, new_inits, block_sums = [], [], {}
    for node in graph.node:
        attrs = _attrs(node)
        has_float_zp = (node.op_type == "MatMulNBits" and len(node.input) > 3 and node.input[3] in inits
                        and inits[node.input[3]].data_type == onnx.TensorProto.FLOAT)
        if not has_float_zp or attrs["K"] % attrs["block_size"]:
            nodes.append(node)
            continue
        k, n, block, bits = attrs["K"], attrs["N"], attrs["block_size"], attrs["bits"]
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, k // block)
        zeros = numpy_helper.to_array(inits[node.input[3]]).reshape(n, k // block)
        x, out = node.input[0], node.output[0]
        if x not in block_sums:
            ones = np.kron(np.eye(k // block, dtype=np.float32), np.ones((block, 1), np.float32))
            new_inits.append(numpy_helper.from_array(ones, f"{x}/block_sum_matrix"))
            block_sums[x] = f"{x}/block_sums"
            nodes.append(helper.make_node("MatMul", [x, f"{x}/block_sum_matrix"], [block_sums[x]],
                                          name=f"{node.name}/block_sums"))
        offsets = (scales * (2 ** (bits - 1) - zeros)).T.astype(np.float32)
        new_inits.append(numpy_helper.from_array(offsets, f"{node.input[1]}/block_offsets"))
        nodes += [
            helper.make_node("MatMulNBits", list(node.input[:3]), [f"{out}/symmetric"], name=node.name,
                             domain="com.microsoft", K=k, N=n, bits=bits, block_size=block,
                             accuracy_level=accuracy_level),
            helper.make_node("MatMul", [block_sums[x], f"{node.input[1]}/block_offsets"], [f"{out}/offset"],
                             name=f"{node.name}/offset"),
            helper.make_node("Add", [f"{out}/symmetric", f"{out}/offset"], [out], name=f"{node.name}/add"),
        ]
        graph.initializer.remove(inits[node.input[3]])
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return model
