"""Each API's request message, its method path, and what its answer says: built here and nowhere else.

native  tlserve.v1.Inference/Classify                ``images``, top_k
tfs     tensorflow.serving.PredictionService/Classify one tf.Example per image (``image/encoded``)
tfs     tensorflow.serving.PredictionService/Predict  pixels: serving_default ``image`` DT_FLOAT in
                                                      tensor_content; images: predict_images
                                                      ``images`` DT_STRING
v2      inference.GRPCInferenceService/ModelInfer     pixels: ``image`` FP32; images: ``images``
                                                      BYTES; both in raw_input_contents

The Python client, the load generator (``tlserve bench``), the reliability suites and the benchmarks
send these; a test that needs a malformed request starts from one and edits it. No gRPC here, only
messages (and nothing of the server: the client imports this).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from tlserve import repository as repo
from tlserve.service.oip_bytes import join_bytes
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb
from tlserve.service.wire.tfs import serving_pb2
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2 as native_pb


def _path(module: ModuleType, service: str, method: str) -> str:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[method].name}"


CLASSIFY = _path(native_pb, "Inference", "Classify")
PREDICT = _path(serving_pb2, "PredictionService", "Predict")
TFS_CLASSIFY = _path(serving_pb2, "PredictionService", "Classify")
MODEL_INFER = _path(oip_pb, "GRPCInferenceService", "ModelInfer")


def float_tensor(pixels: np.ndarray) -> tf_pb.TensorProto:
    """Pixels [N, H, W, 3] as a DT_FLOAT tensor (DT_UINT8 for uint8 pixels: a quarter of the bytes),
    the values in tensor_content."""
    uint8 = pixels.dtype == np.uint8
    tensor = tf_pb.TensorProto(dtype=tf_pb.DT_UINT8 if uint8 else tf_pb.DT_FLOAT)
    tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in pixels.shape)
    tensor.tensor_content = np.ascontiguousarray(pixels, dtype=np.uint8 if uint8 else np.float32).tobytes()
    return tensor


def string_tensor(images: Sequence[bytes]) -> tf_pb.TensorProto:
    """Encoded images as a DT_STRING tensor of shape [N]."""
    tensor = tf_pb.TensorProto(dtype=tf_pb.DT_STRING)
    tensor.tensor_shape.dim.add(size=len(images))
    tensor.string_val.extend(images)
    return tensor


def classify_request(
    model: str, images: Sequence[bytes], version: int = 0, top_k: int = 0, embedding: bool = False
) -> native_pb.ClassifyRequest:
    """``top_k`` 0: the server's default; ``embedding``: also each image's embedding."""
    return native_pb.ClassifyRequest(
        model=model, version=version, images=images, top_k=top_k, embedding=embedding
    )


def tfs_classify_request(
    model: str, images: Sequence[bytes], version: int = 0
) -> serving_pb2.ClassificationRequest:
    """TF Serving's Classify: one tf.Example per encoded image, in its ``image/encoded`` feature."""
    request = serving_pb2.ClassificationRequest()
    request.model_spec.name = model
    if version:
        request.model_spec.version.value = version
    for image in images:
        example = request.input.example_list.examples.add()
        example.features.feature[repo.IMAGE_FEATURE].bytes_list.value.append(image)
    return request


def predict_request(
    model: str,
    pixels: np.ndarray | None = None,
    images: Sequence[bytes] | None = None,
    version: int = 0,
    outputs: Sequence[str] = (),
) -> serving_pb2.PredictRequest:
    """Pixels through ``serving_default`` or encoded images through ``predict_images`` (one of the
    two; neither: a request with no input); ``version`` 0 asks for the newest serving; ``outputs``
    the ``output_filter`` (empty: every output)."""
    request = serving_pb2.PredictRequest(output_filter=list(outputs))
    request.model_spec.name = model
    if version:
        request.model_spec.version.value = version
    if pixels is not None:
        request.model_spec.signature_name = repo.SIGNATURE_PIXELS
        request.inputs[repo.INPUT_NAME].CopyFrom(float_tensor(pixels))
    elif images is not None:
        request.model_spec.signature_name = repo.SIGNATURE_IMAGES
        request.inputs[repo.IMAGES_INPUT_NAME].CopyFrom(string_tensor(images))
    return request


def infer_request(
    model: str,
    pixels: np.ndarray | None = None,
    images: Sequence[bytes] | None = None,
    version: int = 0,
    outputs: Sequence[str] = (),
) -> oip_pb.ModelInferRequest:
    """Pixels as ``image`` FP32 (UINT8 for uint8 pixels) or encoded images as ``images`` BYTES, in
    raw_input_contents; ``outputs`` the outputs asked for (empty: every output)."""
    request = oip_pb.ModelInferRequest(model_name=model, model_version=str(version) if version else "")
    for name in outputs:
        request.outputs.add(name=name)
    if pixels is not None:
        uint8 = pixels.dtype == np.uint8
        request.inputs.add(
            name=repo.INPUT_NAME, datatype="UINT8" if uint8 else "FP32", shape=list(pixels.shape)
        )
        request.raw_input_contents.append(
            np.ascontiguousarray(pixels, dtype=np.uint8 if uint8 else "<f4").tobytes()
        )
    elif images is not None:
        request.inputs.add(name=repo.IMAGES_INPUT_NAME, datatype="BYTES", shape=[len(images)])
        request.raw_input_contents.append(join_bytes(list(images)))
    return request


# --- answers: a serialized answer -> (the version that answered, rows) ----------------------------
def classify_answer(data: bytes) -> tuple[int, int]:
    response = native_pb.ClassifyResponse.FromString(data)
    return int(response.version), len(response.predictions)


def predict_answer(data: bytes) -> tuple[int, int]:
    response = serving_pb2.PredictResponse.FromString(data)
    dims = response.outputs[repo.OUTPUT_NAME].tensor_shape.dim
    return int(response.model_spec.version.value), dims[0].size if dims else 0


def infer_answer(data: bytes) -> tuple[int, int]:
    response = oip_pb.ModelInferResponse.FromString(data)
    rows = response.outputs[0].shape[0] if response.outputs and response.outputs[0].shape else 0
    return int(response.model_version or 0), int(rows)
