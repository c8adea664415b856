"""An export checked from outside: load every artifact with its own runtime and compare with Keras."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from PIL import Image

from tlserve import repository as repo
from tlserve.exporters import calibration, onnx_lifted, reference
from tlserve.exporters.export import ExportOptions, ExportResult, export, summary_table
from tlserve.training import rundir
from tlserve.training.data import RESIZE_METHOD, decode


def keras_model(run_dir: Path) -> keras.Model:
    return keras.models.load_model(run_dir / rundir.MODEL_FILE)


def served_model(run_dir: Path, exported: ExportResult) -> keras.Model:
    """The run's model with the temperature the manifest says every artifact applies."""
    temperature = exported.manifest.calibration["temperature"]
    assert exported.manifest.calibration["method"] == "temperature" and temperature != 1.0
    return calibration.served_model(keras_model(run_dir), temperature)


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


def test_version_layout_and_manifest(exported: ExportResult, run_dir: Path) -> None:
    version_dir = exported.path
    assert version_dir.name == "1" and version_dir.parent.name == "colors"
    names = {p.name for p in version_dir.iterdir()}
    assert {"saved_model.pb", "variables", "assets.extra", "model.onnx", "model.fp16.onnx"} <= names
    assert {"model.int8.onnx", "labels.txt", "manifest.json"} <= names
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]
    manifest = repo.Manifest.read(version_dir)
    assert manifest.to_dict() == json.loads((version_dir / "manifest.json").read_text())
    assert manifest.version == 1 and manifest.name == "colors"
    assert manifest.labels == rundir.read_labels(run_dir) == (version_dir / "labels.txt").read_text().split()
    assert manifest.input.shape == [-1, 32, 32, 3] and manifest.input.value_range == [0.0, 255.0]
    assert manifest.outputs[0].name == "probabilities" and manifest.outputs[0].shape == [-1, 3]
    assert manifest.base["mode"] == "frozen" and manifest.validation["accuracy"] is not None
    assert repo.verify_checksums(version_dir, manifest) == []
    providers = {(a.kind, a.precision): a.recommended_providers for a in manifest.artifacts}
    assert providers[("onnx", "fp32")] == [repo.TENSORRT, repo.CUDA, repo.CPU]
    assert providers[("onnx", "fp16")] == [repo.TENSORRT, repo.CUDA]
    assert providers[("onnx", "int8")] == [repo.CPU]
    assert all(a.latency_ms["batch1_p50"] > 0 for a in manifest.artifacts)


def test_checksums_catch_a_changed_file(exported: ExportResult, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "1"
    shutil.copytree(exported.path, copy)
    with (copy / "model.int8.onnx").open("ab") as f:
        f.write(b"\0")
    (copy / "labels.txt").write_text("relabelled\n")
    (copy / "variables" / "variables.index").unlink()
    bad = repo.verify_checksums(copy, repo.Manifest.read(copy))
    assert sorted(bad) == ["labels.txt", "model.int8.onnx", "variables/variables.index"]


def test_savedmodel_signatures_match_keras(exported: ExportResult, run_dir: Path) -> None:
    model = served_model(run_dir, exported)
    loaded = tf.saved_model.load(str(exported.path))
    assert set(loaded.signatures) == {"serving_default", "predict_images"}
    x = pixels(5)
    got = loaded.signatures["serving_default"](image=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)

    encoded = []
    for i, fmt in enumerate(["PNG", "JPEG", "PNG"]):
        buffer = io.BytesIO()
        Image.fromarray(np.uint8(pixels(1, seed=i)[0])).resize((50, 40)).save(buffer, fmt)
        encoded.append(buffer.getvalue())
    got = loaded.signatures["predict_images"](images=tf.constant(encoded))["probabilities"].numpy()
    # the trainer's own decode + resize, then Keras
    expected_pixels = np.stack(
        [tf.image.resize(decode(tf.constant(b)), (32, 32), method=RESIZE_METHOD).numpy() for b in encoded]
    )
    np.testing.assert_allclose(got, model.predict(expected_pixels, verbose=0), atol=1e-5)


def test_savedmodel_stores_each_weight_once(exported: ExportResult, run_dir: Path) -> None:
    # keras-team/keras#23553: ExportArchive.track() stores every weight twice (2x on disk and in RAM)
    reader = tf.train.load_checkpoint(str(exported.path / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    shapes.pop("_CHECKPOINTABLE_OBJECT_GRAPH")
    stored = sum(int(np.prod(shape)) for shape in shapes.values())
    assert stored == keras_model(run_dir).count_params()


def test_the_exporters_savedmodel_converts_with_its_weights_lifted(
    exported: ExportResult, run_dir: Path
) -> None:
    # NOTE: the SavedModels the exporter writes take the low-memory path (onnx_lifted.py); were they
    # to fall back to tf2onnx's own, ConvNeXtLarge would need over 18 GB again
    _, image, _, weights = onnx_lifted.lift(exported.path, repo.SIGNATURE_PIXELS)
    assert image == "image:0"
    assert sum(w.size for w in weights.values()) == keras_model(run_dir).count_params()
    graph = onnx.load(str(exported.path / "model.onnx")).graph
    initializers = {i.name for i in graph.initializer}
    # the kernels' layout changes were folded into the initializers
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in initializers]


def test_warmup_requests_are_prediction_logs(exported: ExportResult) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported.path / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert 1 <= len(records) <= 1000
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    request = log.predict_log.request
    assert request.model_spec.name == "colors" and request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["image"]).shape == (1, 32, 32, 3)


def test_onnx_parity_claimed_in_the_manifest_holds(exported: ExportResult, run_dir: Path) -> None:
    manifest = repo.Manifest.read(exported.path)
    fp32 = manifest.artifact("onnx", "fp32")
    assert fp32 is not None and fp32.opset == 17
    assert fp32.parity["images"] >= 32 and fp32.parity["max_abs_diff"] <= 1e-4
    assert fp32.parity["top1_agreement"] == 1.0 and fp32.parity["providers"] == ["CPUExecutionProvider"]
    graph = onnx.load(str(exported.path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["probabilities", "embedding"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(exported.path / "model.onnx"), providers=["CPUExecutionProvider"])
    model = served_model(run_dir, exported)
    for batch in (1, 7, 40):  # dynamic batch
        x = pixels(batch, seed=batch)
        got = session.run(["probabilities"], {"image": x})[0]
        expected = model.predict(x, verbose=0)
        assert np.abs(got - expected).max() <= 1e-4
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_every_artifact_has_the_embedding_output(exported: ExportResult, run_dir: Path) -> None:
    """The second output: the pooled features the head reads, from every artifact, as Keras has them."""
    manifest = repo.Manifest.read(exported.path)
    # the one output every server release reads, and the embedding beside it (older servers ignore it)
    assert [(o.name, o.shape) for o in manifest.outputs] == [("probabilities", [-1, 3])]
    assert manifest.embedding == {"name": "embedding", "shape": [-1, 512], "dtype": "float32"}
    assert manifest.embedding_size == 512
    assert manifest.signatures["serving_default"]["outputs"]["embedding"]["shape"] == [-1, 512]
    embedder = reference.embedding_model(keras_model(run_dir))
    assert embedder is not None
    x = pixels(9, seed=5)
    expected = embedder.predict(x, verbose=0)
    scale = max(1.0, float(np.abs(expected).max()))
    signature = tf.saved_model.load(str(exported.path)).signatures["serving_default"]
    from_tf = signature(image=tf.constant(x))
    assert set(from_tf) == {"probabilities", "embedding"}
    assert np.abs(from_tf["embedding"].numpy() - expected).max() <= 1e-4 * scale
    limits = {"fp32": 1e-4, "fp16": 5e-2, "int8": 0.25}  # int8: quantized features, recorded, not gated
    for precision, limit in limits.items():
        artifact = manifest.artifact("onnx", precision)
        assert artifact is not None
        figures = artifact.parity["embedding"]
        assert (
            figures["images"] >= 32
            and figures["relative_diff"] == figures["max_abs_diff"] / figures["largest_value"]
        )
        session = ort.InferenceSession(
            str(exported.path / repo.ONNX_FILES[precision]), providers=["CPUExecutionProvider"]
        )
        probabilities, embedding = session.run(["probabilities", "embedding"], {"image": x})
        assert embedding.shape == (9, 512) and embedding.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-3)  # both outputs of one run
        assert np.abs(embedding - expected).max() <= limit * scale, precision
    saved = manifest.artifact("savedmodel")
    assert saved is not None and saved.parity["embedding"]["relative_diff"] <= 1e-4
    assert saved.parity["predict_images"]["embedding"]["relative_diff"] <= 1e-4


def test_every_artifact_serves_the_calibrated_scores(exported: ExportResult, run_dir: Path) -> None:
    """softmax(logits / T), T from the manifest: computed here from the raw model's own softmax
    (log p = logits + a constant per image), not through the exporter's calibrated model."""
    record = exported.manifest.calibration
    assert record["requested"] and record["images"] == exported.manifest.validation["images"]
    assert 0 <= record["ece_after"] <= 1 and record["nll_after"] <= record["nll_before"] + 1e-9
    temperature = record["temperature"]
    x = pixels(6, seed=11)
    raw = keras_model(run_dir).predict(x, verbose=0).astype(np.float64)
    expected = calibration.softmax(np.log(np.maximum(raw, 1e-30)), temperature)
    assert np.abs(expected - raw).max() > 1e-3  # the temperature changes the scores ...
    assert (expected.argmax(1) == raw.argmax(1)).all()  # ... never the class
    onnx_scores = ort.InferenceSession(str(exported.path / "model.onnx"), providers=["CPUExecutionProvider"])
    tf_scores = tf.saved_model.load(str(exported.path)).signatures["serving_default"]
    assert np.abs(onnx_scores.run(["probabilities"], {"image": x})[0] - expected).max() <= 1e-4
    assert np.abs(tf_scores(image=tf.constant(x))["probabilities"].numpy() - expected).max() <= 1e-4


def test_fp16_keeps_float32_io_and_int8_is_qdq(exported: ExportResult) -> None:
    fp16 = onnx.load(str(exported.path / "model.fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = onnx.load(str(exported.path / "model.int8.onnx"))
    ops = {node.op_type for node in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    manifest = repo.Manifest.read(exported.path)
    quantized = manifest.artifact("onnx", "int8")
    assert quantized is not None
    accuracy = quantized.accuracy
    assert accuracy["images"] > 0 and accuracy["calibration"]["images"] > 0
    assert 0.0 <= accuracy["int8_top1"] <= 1.0 and accuracy["top1_agreement_with_fp32"] >= 0.5
    latency = quantized.latency_ms
    assert latency["speedup_vs_fp32"] == pytest.approx(
        latency["fp32_batch1_p50"] / latency["batch1_p50"], rel=0.01
    )
    # recommended for the CPU exactly when it was measured faster and accurate enough
    good = latency["speedup_vs_fp32"] >= 1.0 and accuracy["delta_points"] >= -1.0
    assert quantized.recommended is good
    assert quantized.recommended_providers == (["CPUExecutionProvider"] if good else [])
    assert bool(quantized.notes) is not good
    # the table shows the fp32 figure the int8 one was timed beside (the one a note quotes)
    row = next(line for line in summary_table(exported).splitlines() if line.startswith("onnx int8"))
    assert f"(fp32 {latency['fp32_batch1_p50']:.2f} beside it: {latency['speedup_vs_fp32']:.2f}x)" in row
    for note in quantized.notes:
        if "not faster" in note:
            assert f"{latency['fp32_batch1_p50']:.2f} ms at batch 1" in note
    session = ort.InferenceSession(str(exported.path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(["probabilities"], {"image": pixels(2)})[0]
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-3)


def test_a_reader_never_sees_a_partial_version(run_dir: Path, exported: ExportResult) -> None:
    model_dir = exported.path.parent
    seen: dict[int, set[str]] = {}
    errors: list[str] = []
    done = threading.Event()

    def look() -> None:
        for version in repo.versions(model_dir):
            path = model_dir / str(version)
            seen.setdefault(version, set()).add(",".join(sorted(p.name for p in path.iterdir())))
            try:
                manifest = repo.Manifest.read(path)
            except repo.ManifestError as exc:
                errors.append(f"version {version}: {exc}")
                continue
            missing = [f for a in manifest.artifacts for f in a.files if not (path / f).exists()]
            if missing or manifest.version != version:
                errors.append(f"version {version}: missing {missing}, manifest says {manifest.version}")

    def watch() -> None:
        while not done.is_set():
            look()
            time.sleep(0.005)
        look()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        options = ExportOptions(
            run_dir=run_dir, repository=model_dir.parent, name="colors", formats=("onnx",)
        )
        result = export(options)
    finally:
        done.set()
        watcher.join()
    assert errors == []
    assert result.path.name == "2" and 2 in seen
    assert len(seen[2]) == 1  # the same complete listing every time it was seen
    assert "manifest.json" in next(iter(seen[2]))
    assert not (result.path / "saved_model.pb").exists()  # formats=onnx only
