"""Freeze and unfreeze policy for a base network.

Fine-tuning unfreezes the *top* of the base. Cutting a residual or inception block in half leaves a
branch that trains beside a frozen twin, so the cut is moved down to the nearest *clean* position: a
point in the layer order that only one tensor crosses. That is found from the graph itself, so it works
for every Keras Application of the table and for any functional network a user trained before, nested
functional and Sequential models included. BatchNormalization layers stay frozen (and the base is
called with ``training=False``), and the baked-in preprocessing layers (``preprocess_*``) are never
trained. LayerNormalization (ConvNeXt) has no moving statistics: it trains with its block, as do
ConvNeXt's layer-scale weights (Keras builds it with no stochastic depth). The newer bases' own
Rescaling/Normalization layers have no trainable weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

PREPROCESS_PREFIX = "preprocess_"


@dataclass(frozen=True)
class FlatGraph:
    leaves: list[keras.layers.Layer]
    """Layers with no sub-layers to descend into, in topological order (nested models inlined)."""
    clean: list[bool]
    """``clean[k]`` says whether unfreezing ``leaves[k:]`` keeps every block whole (len(leaves) + 1)."""


def is_functional(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes") and hasattr(layer, "operations")


def edges(model: keras.Model) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
    # NOTE: Keras 3 keeps the nodes of a functional graph as keys "<id(op)>_ib-<i>" in `_nodes`;
    # a layer shared with another graph has inbound nodes that do not belong to this one.
    edges: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    for op in model.operations:
        for i, node in enumerate(op._inbound_nodes):
            if f"{id(op)}_ib-{i}" not in model._nodes:
                continue
            edges.extend((parent.operation, op) for parent in node.parent_nodes)
    return edges


def clean_cuts(ops: list[keras.layers.Layer], edges: list[tuple[object, object]]) -> list[bool]:
    """Cut k (before ops[k]) is clean when at most one producer has consumers on both sides."""
    index = {id(op): i for i, op in enumerate(ops)}
    last_use: dict[int, int] = {}
    for src, dst in edges:
        s = index.get(id(src), -1)  # an InputLayer counts as position -1
        d = index[id(dst)]
        last_use[s] = max(last_use.get(s, -1), d)
    crossing = [0] * (len(ops) + 1)
    for s, d in last_use.items():
        for k in range(s + 1, d + 1):
            crossing[k] += 1
    return [c <= 1 for c in crossing]


def _flatten_sequential(model: keras.Sequential) -> FlatGraph:
    """A chain: every cut between its layers is clean unless a nested graph says otherwise."""
    leaves: list[keras.layers.Layer] = []
    clean: list[bool] = []
    for layer in model.layers:
        inner = _flatten_nested(layer)
        if inner is None or not inner.leaves:
            clean.append(True)
            leaves.append(layer)
        else:
            clean.extend(inner.clean[:-1])
            leaves.extend(inner.leaves)
    clean.append(True)
    return FlatGraph(leaves, clean)


def _flatten_nested(layer: keras.layers.Layer) -> FlatGraph | None:
    # NOTE: ConvNeXt's stem and downsampling blocks are Sequential models inside the functional one.
    if isinstance(layer, keras.Sequential):
        return _flatten_sequential(layer)
    return flatten(layer) if is_functional(layer) else None


def flatten(model: keras.Model) -> FlatGraph:
    ops = [op for op in model.operations if not isinstance(op, keras.layers.InputLayer)]
    outer_clean = clean_cuts(ops, edges(model))
    leaves: list[keras.layers.Layer] = []
    clean: list[bool] = []
    for j, op in enumerate(ops):
        inner = _flatten_nested(op)
        if inner is not None and inner.leaves:
            whole = outer_clean[j] and outer_clean[j + 1]
            clean.append(outer_clean[j])
            clean.extend(c and whole for c in inner.clean[1:-1])
            leaves.extend(inner.leaves)
        else:
            clean.append(outer_clean[j])
            leaves.append(op)
    clean.append(True)
    return FlatGraph(leaves, clean)


def freeze(base: keras.Model) -> None:
    base.trainable = False


def unfreeze_top(base: keras.Model, count: int | None) -> int:
    """Unfreeze at least the top ``count`` layers (all when None), rounded down to a block boundary.

    Returns the number of layers now on the trainable side of the cut.
    """
    graph = flatten(base)
    total = len(graph.leaves)
    start = 0 if count is None else max(0, total - count)
    while not graph.clean[start]:
        start -= 1
    base.trainable = True
    for i, layer in enumerate(graph.leaves):
        layer.trainable = (
            i >= start
            and not isinstance(layer, keras.layers.BatchNormalization)
            and not layer.name.startswith(PREPROCESS_PREFIX)
        )
    return total - start


def train_all(base: keras.Model, bn_momentum: float | None) -> None:
    """Scratch mode: every layer trains (the preprocessing excepted).

    ``bn_momentum`` replaces the BatchNormalization momentum: the 0.99/0.999 of Keras Applications
    leaves the moving statistics stale after a few hundred steps, and a small-data run then scores
    near chance in inference mode.
    """
    base.trainable = True
    for layer in flatten(base).leaves:
        if layer.name.startswith(PREPROCESS_PREFIX):
            layer.trainable = False
        elif bn_momentum is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
