from __future__ import annotations

import re

import keras
import pytest

from tlserve.training.bases import BASES, BaseSpec
from tlserve.training.freezing import flatten, unfreeze_top
from tlserve.training.network import build_application


def residual_net() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    bn = keras.layers.BatchNormalization(name="bn")(b)
    added = keras.layers.Add(name="add")([a, bn])
    c = keras.layers.Conv2D(4, 1, name="c")(added)
    return keras.Model(inputs, c)


def trainable_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in flatten(model).leaves if layer.trainable]


def test_a_cut_inside_a_residual_block_moves_down_to_the_block_start() -> None:
    model = residual_net()
    graph = flatten(model)
    assert [layer.name for layer in graph.leaves] == ["a", "b", "bn", "add", "c"]
    # before "b" only a's output crosses; before "bn"/"add" the skip connection crosses too
    assert graph.clean == [True, True, False, False, True, True]
    assert unfreeze_top(model, 1) == 1 and trainable_names(model) == ["c"]
    # asking for 2 would split the block (add without b): the whole block comes along; BN stays frozen
    assert unfreeze_top(model, 2) == 4 and trainable_names(model) == ["b", "add", "c"]
    assert unfreeze_top(model, None) == 5 and trainable_names(model) == ["a", "b", "add", "c"]


def test_resnet50_top_layers_are_whole_residual_blocks() -> None:
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    leaves = flatten(model).leaves
    assert unfreeze_top(model, 10) == 10
    assert leaves[-10].name == "conv5_block3_1_conv"
    assert unfreeze_top(model, 11) == 11  # + conv5_block2_out, a ReLU after the add: no block split
    assert leaves[-11].name == "conv5_block2_out"
    assert unfreeze_top(model, 12) == 20  # the add of block 2 needs its whole block
    assert leaves[-20].name == "conv5_block2_1_conv"


def test_nested_models_are_inlined_and_preprocessing_stays_frozen() -> None:
    inner = residual_net()
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255, name="preprocess_tf")(inputs)
    outer = keras.Model(inputs, inner(x))
    names = [layer.name for layer in flatten(outer).leaves]
    assert names == ["preprocess_tf", "a", "b", "bn", "add", "c"]
    assert unfreeze_top(outer, None) == 6
    assert "preprocess_tf" not in trainable_names(outer)


# A layer's block in each newer family, from Keras' layer names; None for layers between blocks
# (stem, downsampling, top). Auto-named ops (MobileNetV3's hard-sigmoid, ConvNeXt's residual add)
# belong to the block of the named layer before them.
BLOCK_NAME = {
    "efficientnet": r"^(block\d+[a-z])_",
    "efficientnet_v2": r"^(block\d+[a-z])_",
    "convnext": r"_(stage_\d+_block_\d+)_",
    "mobilenet_v3": r"^(expanded_conv(?:_\d+)?)_",
}
AUTO_NAMED = re.compile(r"^(add|multiply|re_lu|activation)(_\d+)?$")
FAMILY_BLOCKS = {
    "efficientnet_b0": 16,
    "efficientnet_v2_b0": 21,
    "convnext_tiny": 18,
    "mobilenet_v3_small": 11,
}
NEWER = [s for s in BASES if s.family == "newer"]


def _blocks(leaves: list[keras.layers.Layer], pattern: str) -> list[str | None]:
    blocks: list[str | None] = []
    current = None
    for leaf in leaves:
        if match := re.search(pattern, leaf.name):
            current = match.group(1)
        elif not AUTO_NAMED.match(leaf.name):
            current = None
        blocks.append(current)
    return blocks


@pytest.mark.parametrize(
    "spec",
    [pytest.param(s, marks=[] if s.name in FAMILY_BLOCKS else [pytest.mark.slow]) for s in NEWER],
    ids=[s.name for s in NEWER],
)
def test_newer_families_unfreeze_whole_blocks(spec: BaseSpec) -> None:
    base = build_application(spec, spec.min_size, None)
    leaves = flatten(base).leaves
    blocks = _blocks(leaves, BLOCK_NAME[spec.module])
    starts = {i for i in range(1, len(leaves)) if blocks[i] and blocks[i] != blocks[i - 1]}
    if spec.name in FAMILY_BLOCKS:
        assert len(starts) == FAMILY_BLOCKS[spec.name]
    # residual blocks: a merge in the block takes a tensor from outside it (the skip connection)
    block_of = {id(leaf): b for leaf, b in zip(leaves, blocks, strict=True)}
    residual = {
        b
        for leaf, b in zip(leaves, blocks, strict=True)
        for node in leaf._inbound_nodes
        if b
        and len(node.parent_nodes) > 1
        and any(block_of.get(id(p.operation)) != b for p in node.parent_nodes)
    }
    assert residual, "no residual block found: the names no longer match"
    cuts = set()
    for count in range(1, len(leaves) + 1):
        start = len(leaves) - unfreeze_top(base, count)
        assert start <= len(leaves) - count
        # never half a residual block: its branch would train beside a frozen skip connection. A
        # block without one (EfficientNet's first of a stage) may be cut where one tensor crosses.
        inside = start > 0 and blocks[start] is not None and blocks[start] == blocks[start - 1]
        assert not (inside and blocks[start] in residual), (
            f"cut at {leaves[start].name} splits {blocks[start]}"
        )
        cuts.add(start)
    assert starts <= cuts  # every block boundary is found in the graph: asking for it gives that block
    start = len(leaves) - unfreeze_top(base, len(leaves) - sorted(starts)[-3])
    for leaf in leaves[start:]:
        if isinstance(leaf, keras.layers.BatchNormalization):
            assert not leaf.trainable, leaf.name  # moving statistics stay as trained
        elif isinstance(leaf, keras.layers.LayerNormalization) or type(leaf).__name__ == "LayerScale":
            assert leaf.trainable, leaf.name  # ConvNeXt: no moving statistics, trains with its block
    frozen = [leaf for leaf in leaves[:start] if isinstance(leaf, keras.layers.Layer) and leaf.weights]
    assert frozen and not any(leaf.trainable for leaf in frozen)
    keras.backend.clear_session()
