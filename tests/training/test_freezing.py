from __future__ import annotations

import keras

from tlserve.training.freezing import flatten, unfreeze_top


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
