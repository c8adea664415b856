"""Keras model -> a TF Serving SavedModel with two signatures and a warmup file.

``serving_default``: float32 pixels [N, H, W, 3], RGB 0..255 -> ``probabilities`` (and ``embedding``
when the model has that second output: a Keras model whose outputs are a dict names them).
``predict_images``: a tf.string batch of encoded JPEG/PNG/BMP/GIF -> decoded as the trainer decodes
(TensorFlow's decoder, RGB, first frame), resized as the trainer resizes -> ``probabilities``.
Both go through ``keras.export.ExportArchive``, the path that exports every base (NOTES.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tlserve import repository as repo
from tlserve.exporters.portable import portable_ops
from tlserve.training.data import RESIZE_METHOD, decode

WARMUP_RECORDS = 4


def export_savedmodel(model: keras.Model, out: Path, model_name: str) -> None:
    """Write the SavedModel into ``out`` (which must not exist yet) plus its warmup requests."""
    with portable_ops():  # NOTE: see portable.py: ConvNeXt's ops, as tf2onnx can convert them
        _write_savedmodel(model, out)
    height, width = int(model.inputs[0].shape[1]), int(model.inputs[0].shape[2])
    write_warmup(out, model_name, height, width)


def _write_savedmodel(model: keras.Model, out: Path) -> None:
    height, width = int(model.inputs[0].shape[1]), int(model.inputs[0].shape[2])
    archive = keras.export.ExportArchive()
    # NOTE: no archive.track(model): add_endpoint already tracks the variables the endpoints use, and
    # track() stores each weight a second time (keras-team/keras#23553: 2x the SavedModel on disk, in
    # TF Serving and in tf2onnx)

    def outputs(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        out = model(pixels, training=False)
        return dict(out) if isinstance(out, dict) else {repo.OUTPUT_NAME: out}

    def predict_pixels(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return outputs(image)

    def load_one(encoded: tf.Tensor) -> tf.Tensor:
        image = decode(encoded)
        return tf.image.resize(image, (height, width), method=RESIZE_METHOD)

    def predict_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            load_one, images, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32)
        )
        return outputs(pixels)

    # NOTE: the first endpoint added becomes serving_default.
    archive.add_endpoint(
        repo.SIGNATURE_PIXELS,
        predict_pixels,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=repo.INPUT_NAME)],
    )
    archive.add_endpoint(
        repo.SIGNATURE_IMAGES,
        predict_images,
        input_signature=[tf.TensorSpec([None], tf.string, name=repo.IMAGES_INPUT_NAME)],
    )
    archive.write_out(str(out), verbose=False)


def write_warmup(out: Path, model_name: str, height: int, width: int) -> None:
    """``assets.extra/tf_serving_warmup_requests``: PredictionLog records TF Serving replays at load."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = out / repo.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in range(1, WARMUP_RECORDS + 1):
            pixels = rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=repo.SIGNATURE_PIXELS),
            )
            request.inputs[repo.INPUT_NAME].CopyFrom(tf.make_tensor_proto(pixels))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def savedmodel_files(root: Path) -> list[str]:
    """Relative paths of every file the SavedModel wrote (for its checksum), ``saved_model.pb`` first."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != repo.SAVED_MODEL_FILE]
    return [repo.SAVED_MODEL_FILE, *(str(p.relative_to(root)) for p in files)]


def load_signatures(path: Path) -> Any:
    return tf.saved_model.load(str(path)).signatures
