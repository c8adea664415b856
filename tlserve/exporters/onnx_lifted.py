"""SavedModel -> ONNX with the weights kept out of tf2onnx: a few times the model's size in RAM.

tf2onnx's own path freezes the SavedModel (every variable becomes a constant in a GraphDef, copied
several times over by TensorFlow's freezing and grappler) and then runs its ONNX optimizer over those
constants: ConvNeXtLarge's 757 MB SavedModel peaked at 8.7 GB in freezing alone, 15.7 GB after
grappler, and was OOM-killed at 18.4 GB; this path converted it at a 3.2 GB peak in 22 s. Here the
variables never become constants:

1. the ``serving_default`` function's body (one function whose arguments are the image and the
   captured variables) is turned into a GraphDef in which each ``ReadVariableOp`` of a captured
   variable is a ``Placeholder`` of the variable's shape, its value kept aside as a numpy array;
2. tf2onnx converts that light graph (weights as graph inputs: kilobytes of constants);
3. the weight inputs become initializers, and the ops computed only from initializers (the
   transposes and reshapes tf2onnx puts on kernels) are folded with ONNX's reference evaluator;
4. the input and output get the repository's names (``image`` -> ``probabilities``).

A SavedModel of another shape (more than one function called at the top, variables used other
than by ``ReadVariableOp``, e.g. handed to a nested function) raises :class:`NotLiftable`, and the
caller converts with tf2onnx's own path.
Run as ``python -m tlserve.exporters.onnx_lifted SAVED_MODEL OUT.onnx OPSET``: exit 0 (written),
:data:`EXIT_NOT_LIFTABLE` (nothing written; the reason on stderr), anything else a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

EXIT_NOT_LIFTABLE = 3
SMALL = 4096
"""Captured constants under this many elements stay constants in the light graph (tf2onnx may need
their values: shapes, axes, epsilons); larger ones are lifted like variables."""


RANDOM = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}
"""Ops never folded: a fixed sample is not the op."""


class NotLiftable(Exception):
    """The SavedModel's serving function is not the flat shape this converter handles."""


def lift(saved_model: Path, signature: str) -> tuple[Any, str, dict[str, str], dict[str, Any]]:
    """The serving function as a GraphDef with its weights as placeholders: (graph_def, input tensor
    name, {signature output key: tensor name}, {placeholder node name: numpy value})."""
    import tensorflow as tf
    from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def

    loaded = tf.saved_model.load(str(saved_model), tags=["serve"])
    if signature not in loaded.signatures:
        raise NotLiftable(f"no signature {signature!r}")
    func = loaded.signatures[signature]
    top = func.graph.as_graph_def()
    calls = [n for n in top.node if n.op in ("StatefulPartitionedCall", "PartitionedCall")]
    if len(calls) != 1:
        raise NotLiftable(f"{len(calls)} function calls at the top, not one")
    call = calls[0]
    library = {f.signature.name: f for f in top.library.function}
    fdef = library.pop(call.attr["f"].func.name)
    keys = sorted(func.structured_outputs) if isinstance(func.structured_outputs, dict) else []
    if len(keys) != len(func.outputs) or len(fdef.signature.output_arg) != len(keys):
        raise NotLiftable(f"{len(fdef.signature.output_arg)} function outputs for outputs {keys}")
    # NOTE: func.outputs follow the sorted keys (tf.nest's order); each is an Identity of one call output
    producers = {n.name: n for n in top.node}
    returned: dict[str, int] = {}
    for key, tensor in zip(keys, func.outputs, strict=True):
        node = producers.get(tensor.name.split(":")[0])
        sources = [i for i in node.input if not i.startswith("^")] if node is not None else []
        if node is None or node.op != "Identity" or len(sources) != 1 or _source(sources[0]) != call.name:
            raise NotLiftable(f"output {key!r} is not an Identity of the serving call")
        returned[key] = int(sources[0].split(":")[1]) if ":" in sources[0] else 0
    captured = {inner.name.split(":")[0]: outer for outer, inner in func.graph.captures}
    args: dict[str, Any] = {}  # function argument -> the captured tensor it receives
    image = []
    call_inputs = [name for name in call.input if not name.startswith("^")]
    if len(call_inputs) != len(fdef.signature.input_arg):
        raise NotLiftable(f"{len(call_inputs)} call inputs for {len(fdef.signature.input_arg)} arguments")
    for arg, source in zip(fdef.signature.input_arg, call_inputs, strict=True):
        source = source.split(":")[0]
        if source in captured:
            args[arg.name] = captured[source]
        else:
            image.append(arg.name)
    if len(image) != 1:
        raise NotLiftable(f"{len(image)} inputs that are not captured tensors, not one")
    graph_def, flat = function_def_to_graph_def(fdef)
    # NOTE: the other functions go along (EfficientNet's swish gradients; a nested call is inlined
    # by tf2onnx's grappler pass, unless it is handed a variable: that is refused below)
    graph_def.library.function.extend(library.values())
    weights: dict[str, Any] = {}
    first_read: dict[str, str] = {}  # variable argument -> the placeholder of its first read
    nodes = []
    for node in graph_def.node:
        if node.name in args:  # an argument's placeholder
            outer = args[node.name]
            if outer.dtype == tf.resource:
                continue  # read below, by each ReadVariableOp
            value = outer.numpy()
            if value.size >= SMALL and value.dtype.kind == "f":
                weights[node.name] = value
                _placeholder(node, outer.dtype.as_datatype_enum, value.shape)
            else:
                node.op = "Const"
                node.ClearField("attr")
                node.attr["dtype"].type = outer.dtype.as_datatype_enum
                node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        elif node.op == "ReadVariableOp" and _source(node.input[0]) in args:
            variable = _source(node.input[0])
            dtype = node.attr["dtype"].type
            del node.input[:]
            if variable in first_read:  # NOTE: read again (a shared layer): one copy of the weights
                node.op = "Identity"
                node.input.append(first_read[variable])
                node.ClearField("attr")
                node.attr["T"].type = dtype
            else:
                value = tf.raw_ops.ReadVariableOp(resource=args[variable], dtype=dtype).numpy()
                weights[node.name] = value
                first_read[variable] = node.name
                _placeholder(node, dtype, value.shape)
        nodes.append(node)
    variables = {name for name, outer in args.items() if outer.dtype == tf.resource}
    for node in nodes:
        for name in node.input:
            if _source(name) in variables:
                raise NotLiftable(f"{node.op} {node.name!r} uses a variable other than by reading it")
    del graph_def.node[:]
    graph_def.node.extend(nodes)
    outputs = {key: flat[fdef.ret[fdef.signature.output_arg[index].name]] for key, index in returned.items()}
    return graph_def, f"{image[0]}:0", outputs, weights


def _source(name: str) -> str:
    return name.lstrip("^").split(":")[0]


def _placeholder(node: Any, dtype: int, shape: tuple[int, ...]) -> None:
    import tensorflow as tf

    node.op = "Placeholder"
    node.ClearField("attr")
    node.attr["dtype"].type = dtype
    node.attr["shape"].shape.CopyFrom(tf.TensorShape(shape).as_proto())


def convert(saved_model: Path, out: Path, opset: int, signature: str, input_name: str, first: str) -> None:
    """Write ``out``: the ONNX graph of ``signature``, its input named ``input_name`` and each output
    by its signature key, ``first`` first."""
    import gc

    import onnx
    from onnx import numpy_helper
    from tf2onnx import convert as tf2onnx_convert

    graph_def, image, outputs, weights = lift(saved_model, signature)
    gc.collect()  # NOTE: the loaded SavedModel's variables go; only the numpy copies stay
    lifted = {f"{name}:0": name for name in weights}
    keys = sorted(outputs, key=lambda k: (k != first, k))
    model, _ = tf2onnx_convert.from_graph_def(
        graph_def, input_names=[image, *lifted], output_names=[outputs[k] for k in keys], opset=opset
    )
    del graph_def
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        raise NotLiftable("the ONNX graph has control flow (If/Loop/Scan): its subgraphs are not folded here")
    inputs = [i for i in graph.input if i.name not in lifted]
    used = [i.name for i in graph.input if i.name in lifted]
    del graph.input[:]
    graph.input.extend(inputs)
    for name in used:
        graph.initializer.append(numpy_helper.from_array(weights.pop(lifted[name]), name))
    weights.clear()
    fold_constants(model)
    rename(model, {image: input_name, **{outputs[k]: k for k in keys}})
    onnx.save(model, str(out))


def fold_constants(model: Any, grow_limit: int = 2**20) -> dict[str, int]:
    """Replace every node whose inputs are all initializers (or Constant nodes) by its result, in
    graph order, unless the result is larger than its inputs and ``grow_limit`` bytes (Expand, Tile),
    the op is random, it has subgraphs, or it produces a graph output. Returns how many nodes of each
    op were folded."""
    import numpy as np
    from onnx import AttributeProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    outputs = {o.name for o in graph.output}
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    del graph.initializer[:]
    kept: list[Any] = []
    folded: dict[str, int] = {}
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif (
            inputs
            and node.domain in ("", "ai.onnx")
            and node.op_type not in RANDOM
            and not any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)
            and not outputs.intersection(node.output)
            and all(i in values for i in inputs)
        ):
            feeds = {i: values[i] for i in inputs}
            one = helper.make_model(
                helper.make_graph(
                    [node],
                    "fold",
                    [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                     for i, v in feeds.items()],
                    [helper.make_tensor_value_info(o, 0, None) for o in node.output],
                ),
                opset_imports=model.opset_import,
            )  # fmt: skip
            results = [np.asarray(r) for r in ReferenceEvaluator(one).run(None, feeds)]
            if sum(r.nbytes for r in results) > max(sum(v.nbytes for v in feeds.values()), grow_limit):
                kept.append(node)
                continue
            values.update(zip(node.output, results, strict=True))
        else:
            kept.append(node)
            continue
        folded[node.op_type] = folded.get(node.op_type, 0) + 1
    needed = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items() if k in needed)
    return folded


def rename(model: Any, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs (and every reference to them)."""
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]


def main(argv: list[str]) -> int:
    from tlserve import repository as repo

    saved_model, out, opset = Path(argv[0]), Path(argv[1]), int(argv[2])
    try:
        convert(saved_model, out, opset, repo.SIGNATURE_PIXELS, repo.INPUT_NAME, repo.OUTPUT_NAME)
    except NotLiftable as e:
        out.unlink(missing_ok=True)
        print(f"not liftable: {e}", file=sys.stderr)
        return EXIT_NOT_LIFTABLE
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
