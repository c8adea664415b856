"""Features from several depths of an earlier network: what frozen transfer from your own net needs.

A network trained on a few classes has last-layer features that only tell *those* classes apart
(Yosinski et al. 2014: features grow task-specific with depth; a small net trained on five classes
shows it sharply). Its earlier blocks hold general edges, strokes and textures. So when an earlier
network becomes the base, the features are the pooled outputs of its last block at each of the
three spatial resolutions before the final one, concatenated with its final features (for a
MobileNetV2 at 32 px: block_2_add, block_5_add, block_12_add and out_relu).

Measured with a linear classifier on 10 images per class (docs/training.md): a MobileNetV2 trained on
drawn shapes, reused for digits: final features 0.39, several depths 0.78; one trained on digits 0-4,
reused for faces vs non-faces: 0.84 and 0.89; for digits 5-9: 0.45 and 0.74.

A block boundary is a point in the layer order that only one tensor crosses (``freezing``), so the
taps never sit inside a residual or inception block. Built-in layers only (pooling, Concatenate):
the model still loads in Keras' safe mode.
"""

from __future__ import annotations

from typing import Any

import keras

from tlserve.training.freezing import clean_cuts, edges, is_functional

STAGES = 3
"""Taps before the final resolution: the last block output at each of the three deepest ones."""
_PASSTHROUGH = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def _producer(tensor: Any) -> Any:
    return tensor._keras_history.operation


def _single_input(op: Any) -> Any | None:
    nodes = op._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    return nodes[0].input_tensors[0]


# NOTE: ConvNeXt's residual merge is `inputs + x`: an ops-level Add, not a layer.
_MERGES = (keras.layers.Add, keras.layers.Concatenate, keras.src.ops.numpy.Add)
_POOLS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def stage_ends(model: keras.Model, final_size: int | None) -> list[Any]:
    """The last block output at each spatial size other than ``final_size``, the deepest
    ``STAGES`` of them, in depth order.

    A block output is a feature map at a block boundary made by a merge (the Add of a residual
    block, the Concatenate of a dense block) or, in a network without merges, by a pooling layer
    (the end of a VGG stage); in a network with neither, any learnt feature map at a boundary.
    """
    ops = [op for op in model.operations if not isinstance(op, keras.layers.InputLayer)]
    clean = clean_cuts(ops, edges(model))
    candidates = [
        ops[k - 1]
        for k in range(1, len(ops) + 1)
        if clean[k] and not is_functional(ops[k - 1]) and len(ops[k - 1]._inbound_nodes) == 1
    ]
    maps = [op for op in candidates if len(op.output.shape) == 4 and op.output.shape[1] is not None]
    for kinds in (_MERGES, _POOLS):
        if any(isinstance(op, kinds) for op in maps):
            maps = [op for op in maps if isinstance(op, kinds)]
            break
    else:
        # NOTE: not the rescaled pixels of a preprocess layer; ops (not layers) have no weights
        maps = [op for op in maps if getattr(op, "weights", ())]
    last: dict[int, Any] = {}
    for op in maps:
        size = op.output.shape[1]
        if size != final_size:
            last.pop(size, None)  # NOTE: re-insert, so the dict keeps depth order
            last[size] = op.output
    return list(last.values())[-STAGES:]


def with_taps(earlier: keras.Model, features: Any) -> keras.Model | None:
    """pixels -> [pooled stage ends of ``earlier``..., ``features``] concatenated, or None when the
    graph has no such taps (or a shape this does not follow); ``earlier`` is a functional model."""
    producer = _producer(features)
    final = features
    if isinstance(producer, _PASSTHROUGH) and _single_input(producer) is not None:
        final = _single_input(producer)
        producer = _producer(final)
    if is_functional(producer) and producer is not earlier:
        if len(producer.outputs) != 1:
            return None
        # NOTE: a tlserve run: pixels -> preprocess_* -> nested base -> pool. The taps live in the
        # nested graph, so that graph gets the extra outputs and the chain before it is replayed.
        chain: list[Any] = []
        tensor = _single_input(producer)
        while tensor is not None and not isinstance(_producer(tensor), keras.layers.InputLayer):
            layer = _producer(tensor)
            chain.insert(0, layer)
            tensor = _single_input(layer)
        if tensor is None or any(is_functional(layer) for layer in chain):
            return None
        graph, graph_final = producer, producer.outputs[0]
    elif any(is_functional(op) for op in earlier.operations):
        return None  # NOTE: features taken behind a nested network (a hidden layer, a Flatten)
    else:
        chain, graph, graph_final = [], earlier, final
    size = graph_final.shape[1] if len(graph_final.shape) == 4 else None
    taps = stage_ends(graph, size)
    if not taps:
        return None
    trunk = keras.Model(graph.inputs, [*taps, graph_final], name="trunk")
    inputs = keras.Input(earlier.inputs[0].shape[1:], name="pixels")
    x = inputs
    for layer in chain:
        x = layer(x)
    outputs = trunk(x)
    pooled = [
        keras.layers.GlobalAveragePooling2D(name=f"tap_pool_{i}")(t) if len(t.shape) == 4 else t
        for i, t in enumerate(outputs)
    ]
    return keras.Model(inputs, keras.layers.Concatenate(name="taps")(pooled), name="base")
