"""Each mode end to end on tiny generated data, the chain from an own model, and the run-dir contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tests.conftest import random_weights, write_folder
from tlserve.training import rundir
from tlserve.training.config import TrainConfig
from tlserve.training.trainer import train

TINY: dict[str, Any] = {
    "base": "mobilenet_v2",
    "weights": "random",
    "image_size": 32,
    "epochs": 2,
    "fine_tune_epochs": 2,
    "batch_size": 8,
    "augment": (),
    "val_split": 0.25,
}


def run(data: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    """``weights="random"``: a random weights file of the base (the trainer refuses a frozen base
    with weights none)."""
    options = {**TINY, **overrides}
    if options["weights"] == "random":
        is_table_base = "/" not in options["base"]
        options["weights"] = random_weights(options["base"]) if is_table_base else "none"
    return train(TrainConfig(data_dir=data, out=out, **options))


def check_run_dir(out: Path, classes: list[str]) -> keras.Model:
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*rundir.REQUIRED_FILES, rundir.HISTORY_PLOT, rundir.CONFUSION_PLOT, rundir.MISTAKES_PLOT]
    )
    assert rundir.read_labels(out) == classes
    for plot in (rundir.HISTORY_PLOT, rundir.CONFUSION_PLOT, rundir.MISTAKES_PLOT):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the contract: plain Keras, safe mode, no tlserve needed to load it
    model = keras.models.load_model(out / rundir.MODEL_FILE, safe_mode=True)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (3, len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("data") / "colors", per_class=8)


@pytest.fixture(scope="module")
def vgg_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen VGG16 (random init: no BatchNorm, so its features carry the colours) that learns."""
    out = tmp_path_factory.mktemp("runs") / "vgg"
    run(data, out, base="vgg16", mode="frozen", epochs=8, lr=1e-2)
    return out


def test_frozen_mode_trains_head_on_cached_features(vgg_run: Path) -> None:
    out = vgg_run
    report = rundir.read_run_json(out)
    check_run_dir(out, ["blue", "green", "red"])
    (phase,) = report["phases"]
    assert phase["name"] == "head" and phase["used_feature_cache"] is True
    assert phase["epochs_run"] >= 1 and len(phase["history"]) == phase["epochs_run"]
    assert report["timings"]["feature_extraction_seconds"] > 0
    assert report["dataset"]["train_images"] + report["dataset"]["val_images"] == 24
    assert len(report["dataset"]["val_files"]) == report["dataset"]["val_images"]
    metrics = report["metrics"]
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert sum(map(sum, metrics["confusion_matrix"])) == report["dataset"]["val_images"]
    assert {"tensorflow", "keras", "numpy", "python"} <= set(report["versions"])
    # only the head trained (VGG16 gives 512 features), and it learnt the colours
    assert phase["trainable_params"] == 512 * 3 + 3
    assert metrics["accuracy"] >= 0.9, metrics
    model = keras.models.load_model(out / rundir.MODEL_FILE)
    assert model.get_layer("preprocess_caffe") is not None


def test_feature_cache_spills_to_disk_with_the_same_features(data: Path, tmp_path: Path) -> None:
    from tlserve.training.bases import get_base
    from tlserve.training.data import image_dataset, plan_dataset
    from tlserve.training.features import batches, extract
    from tlserve.training.network import build_application, build_classifier
    from tlserve.training.preprocessing import preprocessing_layers

    plan = plan_dataset(data, 0.25, None, seed=0)
    spec = get_base("mobilenet_v2")
    clf = build_classifier(
        build_application(spec, 32, None),
        image_size=32,
        num_classes=3,
        preprocess=preprocessing_layers("tf"),
        dropout=0.0,
        hidden=0,
        base_in_inference_mode=True,
    )
    caches = [
        extract(
            clf.features,
            image_dataset(plan.train, 32, 5, shuffle=False, seed=0, cache=False),
            len(plan.train),
            memory_limit_bytes=limit,
            spill_dir=tmp_path,
            name="train",
            progress=False,
        )
        for limit in (2**30, 0)
    ]
    memory, disk = caches
    assert not memory.on_disk and disk.on_disk and (tmp_path / "features-train.npy").is_file()
    np.testing.assert_array_equal(memory.features, disk.features)
    np.testing.assert_array_equal(memory.labels, np.asarray(plan.train.labels))
    assert memory.features.shape == (len(plan.train), 1280)
    pairs = [(f.tobytes(), int(y)) for f, y in zip(memory.features, memory.labels, strict=True)]
    for cache in caches:  # every epoch sees every example once, features still paired with labels
        seen = []
        for features, labels in batches(cache, 4, shuffle=True, seed=1):
            seen += [
                (f.tobytes(), int(y)) for f, y in zip(np.asarray(features), np.asarray(labels), strict=True)
            ]
        assert sorted(seen) == sorted(pairs)


def test_trainer_spills_the_cache_and_cleans_up(data: Path, tmp_path: Path) -> None:
    report = run(data, tmp_path / "disk", mode="frozen", epochs=2, cache_memory_mb=0)
    assert report["timings"]["feature_cache"]["on_disk"] is True
    assert report["phases"][0]["used_feature_cache"] is True
    assert not list((tmp_path / "disk").glob("*.npy"))


def test_cached_and_uncached_training_agree(data: Path, tmp_path: Path) -> None:
    options = {"base": "vgg16", "mode": "frozen", "epochs": 3, "lr": 1e-2, "dropout": 0.0}
    cached = run(data, tmp_path / "cached", feature_cache="on", **options)
    direct = run(data, tmp_path / "direct", feature_cache="off", **options)
    assert cached["phases"][0]["used_feature_cache"] and not direct["phases"][0]["used_feature_cache"]
    for a, b in zip(cached["phases"][0]["history"], direct["phases"][0]["history"], strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    assert cached["metrics"]["confusion_matrix"] == direct["metrics"]["confusion_matrix"]


def test_augmentation_is_cached_as_augmented_copies(data: Path, tmp_path: Path) -> None:
    report = run(data, tmp_path / "aug", mode="frozen", epochs=1, augment=("flip", "zoom"))
    (phase,) = report["phases"]
    assert phase["used_feature_cache"] is True
    # 18 training images: as many copies as fit in the budget, at most 10
    assert phase["augmented_copies"] == report["timings"]["feature_cache"]["augmented_copies"] == 10
    assert report["timings"]["feature_cache"]["train_bytes"] == 11 * 18 * 1280 * 4
    assert list(report["augmentation"]) == ["flip", "zoom"]
    assert report["config"]["augment"] == ["flip", "zoom"]


def test_augmentation_without_the_cache_runs_the_base(data: Path, tmp_path: Path) -> None:
    report = run(data, tmp_path / "aug", mode="frozen", epochs=1, augment=("zoom",), feature_cache="off")
    assert report["phases"][0]["used_feature_cache"] is False
    assert "feature_extraction_seconds" not in report["timings"]


def test_mixed_precision_runs_and_keeps_float32_probabilities(data: Path, tmp_path: Path) -> None:
    report = run(data, tmp_path / "mixed", mode="frozen", epochs=1, mixed_precision="on")
    assert report["timings"]["devices"]["mixed_precision"] is True
    model = keras.models.load_model(tmp_path / "mixed" / rundir.MODEL_FILE)
    assert model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("preprocess_tf").dtype_policy.compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run


def test_seed_makes_a_run_repeatable(data: Path, tmp_path: Path) -> None:
    options = {"base": "vgg16", "mode": "frozen", "epochs": 2, "lr": 1e-2, "augment": ("flip", "rotate")}
    a = run(data, tmp_path / "a", seed=3, **options)
    b = run(data, tmp_path / "b", seed=3, **options)
    c = run(data, tmp_path / "c", seed=4, **options)
    assert a["phases"][0]["history"] == b["phases"][0]["history"]
    assert a["dataset"]["val_files"] == b["dataset"]["val_files"]
    assert a["phases"][0]["history"] != c["phases"][0]["history"]


def test_finetune_unfreezes_whole_blocks_after_the_head(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    report = run(data, out, mode="finetune", unfreeze=10, class_weight="auto")
    assert [p["name"] for p in report["phases"]] == ["head", "finetune"]
    head, fine = report["phases"]
    assert fine["learning_rate"] == 1e-5
    assert fine["unfrozen_layers"] >= 10
    assert fine["trainable_params"] > head["trainable_params"]
    # fine-tuning starts from the kept head (scored by the full model, not the cached features),
    # and never ends worse than it
    assert fine["start"]["val_accuracy"] == pytest.approx(head["kept"]["val_accuracy"], abs=1e-5)
    assert fine["start"]["val_loss"] == pytest.approx(head["kept"]["val_loss"], rel=1e-3)
    assert fine["kept"]["val_accuracy"] >= fine["start"]["val_accuracy"]
    assert report["metrics"]["accuracy"] == pytest.approx(fine["kept"]["val_accuracy"], abs=1e-5)
    model = check_run_dir(out, ["blue", "green", "red"])
    base = model.get_layer("base")
    assert all(
        not layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_scratch_trains_every_layer_with_lower_bn_momentum(data: Path, tmp_path: Path) -> None:
    report = run(data, tmp_path / "scratch", mode="scratch", epochs=4, lr=3e-3, patience=4)
    (phase,) = report["phases"]
    assert phase["name"] == "scratch"
    # it learns in training mode (18 images are too few for it to beat chance on validation)
    assert phase["history"][-1]["accuracy"] > phase["history"][0]["accuracy"]
    model = check_run_dir(tmp_path / "scratch", ["blue", "green", "red"])
    bns = [layer for layer in model.get_layer("base").layers if type(layer).__name__ == "BatchNormalization"]
    assert bns and all(layer.momentum == 0.9 for layer in bns)
    assert phase["trainable_params"] > 2_000_000


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_an_earlier_run_becomes_the_base(vgg_run: Path, tmp_path: Path, mode: str) -> None:
    target = write_folder(
        tmp_path / "target", per_class=10, classes={"cyan": (0, 200, 200), "yellow": (220, 220, 0)}
    )
    out = tmp_path / "bears"
    overrides = {"base": str(vgg_run), "image_size": None, "unfreeze": 3, "lr": 3e-2, "epochs": 15}
    overrides |= {"patience": 15, "fine_tune_lr": 1e-4}
    report = run(target, out, mode=mode, **overrides)
    assert report["base"]["earlier"] == str(vgg_run.resolve())
    assert report["metrics"]["accuracy"] >= 0.75, report["metrics"]  # chance is 0.5
    model = check_run_dir(out, ["cyan", "yellow"])
    # the earlier network brings its own preprocessing and trunk; only its classifier is replaced
    inner = model.get_layer("base")
    assert inner.get_layer("preprocess_caffe") is not None
    assert model.get_layer("probabilities").units == 2


def test_a_users_own_keras_file_becomes_the_base(data: Path, tmp_path: Path) -> None:
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    path = tmp_path / "cats_vs_dogs.keras"
    keras.Model(inputs, outputs).save(path)
    report = run(data, tmp_path / "run", base=str(path), image_size=None, mode="frozen")
    assert report["base"]["image_size"] == 24
    model = keras.models.load_model(tmp_path / "run" / rundir.MODEL_FILE)
    # cut below the old classifier: its 16 features and the 8 pooled ones of its max-pooling stage
    assert model.get_layer("base").outputs[0].shape[-1] == 16 + 8
    assert model.get_layer("probabilities").units == 3


def test_a_run_that_learnt_nothing_is_flagged_weak(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a frozen random MobileNetV2: BatchNorm in inference mode leaves its features nearly constant
    report = run(data, tmp_path / "weak", base="mobilenet_v2", mode="frozen", epochs=2)
    err = capsys.readouterr().err
    assert report["quality"]["weak"] is True and report["quality"]["reasons"]
    assert rundir.read_run_json(tmp_path / "weak")["quality"] == report["quality"]
    assert err.count("warning: weak model:") == 1 and "--allow-weak" in err


def test_a_good_run_is_not_weak_and_lists_its_mistakes(vgg_run: Path) -> None:
    report = rundir.read_run_json(vgg_run)
    assert report["quality"]["weak"] is False
    head = report["phases"][0]
    assert 1 <= head["kept_epoch"] <= head["epochs_run"]
    assert head["kept"] == head["history"][head["kept_epoch"] - 1]
    wrong = sum(report["metrics"]["confusion_matrix"][i][j] for i in range(3) for j in range(3) if i != j)
    assert len(report["mistakes"]) == min(wrong, 16)
    assert all(m["true"] != m["predicted"] for m in report["mistakes"])
