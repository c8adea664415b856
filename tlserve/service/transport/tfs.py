"""TensorFlow Serving's gRPC API (PredictionService, ModelService) over the core.

Signatures, as the exporter writes them into the SavedModel (and GetModelMetadata reports):
``serving_default`` (input ``image``: DT_FLOAT [N, H, W, 3]; DT_UINT8 is taken too and converted),
``predict_images`` (input ``images``:
DT_STRING [N] encoded images); both output ``probabilities`` DT_FLOAT [N, classes]. Classify takes
tf.Examples with the encoded image in the ``image/encoded`` bytes feature and returns every class with
its score, best first (real TF Serving cannot Classify a TF2 export; this server can).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from grpc import aio

from tlserve import repository as repo
from tlserve.service.core import InferenceCore, check_batch_size
from tlserve.service.domain import ModelMetadata, ModelRef, ModelStatus, State
from tlserve.service.errors import InvalidArgument
from tlserve.service.transport import tfs_codec
from tlserve.service.transport.deadline import deadline_of
from tlserve.service.wire.tfs import error_pb2, serving_pb2, serving_pb2_grpc
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb

Context: TypeAlias = aio.ServicerContext[Any, Any]
CLASSIFY_SIGNATURE = "classify"
SIGNATURE_DEF = "signature_def"
METHOD_PREDICT = "tensorflow/serving/predict"
METHOD_CLASSIFY = "tensorflow/serving/classify"
SIGNATURE_INPUTS = {repo.SIGNATURE_PIXELS: repo.INPUT_NAME, repo.SIGNATURE_IMAGES: repo.IMAGES_INPUT_NAME}
STATE = {
    State.LOADING: serving_pb2.ModelVersionStatus.LOADING,
    State.AVAILABLE: serving_pb2.ModelVersionStatus.AVAILABLE,
    State.UNLOADING: serving_pb2.ModelVersionStatus.UNLOADING,
    State.UNLOADED: serving_pb2.ModelVersionStatus.END,
    State.FAILED: serving_pb2.ModelVersionStatus.END,
}


def model_ref(spec: serving_pb2.ModelSpec) -> ModelRef:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value < 1:
            raise InvalidArgument(f"model_spec.version must be a positive integer; got {spec.version.value}")
        return ModelRef(spec.name, version=spec.version.value)
    return ModelRef(spec.name, label=spec.version_label or None)


def answered_spec(name: str, version: int, signature: str) -> serving_pb2.ModelSpec:
    spec = serving_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


OUTPUTS = (repo.OUTPUT_NAME, repo.EMBEDDING_NAME)


class PredictionService(serving_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.max_elements = core.settings.max_message_bytes // 4

    async def Predict(
        self, request: serving_pb2.PredictRequest, context: Context
    ) -> serving_pb2.PredictResponse:
        ref = model_ref(request.model_spec)
        signature = request.model_spec.signature_name or repo.SIGNATURE_PIXELS
        if signature not in SIGNATURE_INPUTS:
            raise InvalidArgument(
                f"signature {signature!r} not found; this model has {', '.join(SIGNATURE_INPUTS)} "
                f"(and {CLASSIFY_SIGNATURE} for the Classify method)"
            )
        expected = SIGNATURE_INPUTS[signature]
        if set(request.inputs) != {expected}:
            got = ", ".join(sorted(request.inputs)) or "none"
            raise InvalidArgument(f"signature {signature} takes exactly one input {expected!r}; got: {got}")
        outputs = list(request.output_filter)
        if len(set(outputs)) != len(outputs) or any(o not in OUTPUTS for o in outputs):
            raise InvalidArgument(
                f"output_filter {outputs}: the outputs are {repo.OUTPUT_NAME!r} and {repo.EMBEDDING_NAME!r}, "
                "each name at most once"
            )
        tensor = request.inputs[expected]
        inputs: np.ndarray | list[bytes]
        if signature == repo.SIGNATURE_PIXELS:
            inputs = tfs_codec.to_array(tensor, expected, self.max_elements)
        else:
            inputs = tfs_codec.to_strings(tensor, expected, self.core.settings.max_batch_size)
        result = await self.core.infer(ref, inputs, deadline_of(context))
        response = serving_pb2.PredictResponse(
            model_spec=answered_spec(result.name, result.version, signature)
        )
        # NOTE: as TF Serving: no output_filter means every output of the signature
        if repo.EMBEDDING_NAME in outputs and result.embedding is None:
            raise InvalidArgument(
                f"output_filter {outputs}: version {result.version} of {result.name!r} has no "
                f"{repo.EMBEDDING_NAME!r} output (exported before it existed)"
            )
        if not outputs or repo.OUTPUT_NAME in outputs:
            response.outputs[repo.OUTPUT_NAME].CopyFrom(tfs_codec.from_array(result.probabilities))
        if result.embedding is not None and (not outputs or repo.EMBEDDING_NAME in outputs):
            response.outputs[repo.EMBEDDING_NAME].CopyFrom(tfs_codec.from_array(result.embedding))
        return response

    async def Classify(
        self, request: serving_pb2.ClassificationRequest, context: Context
    ) -> serving_pb2.ClassificationResponse:
        ref = model_ref(request.model_spec)
        signature = request.model_spec.signature_name or CLASSIFY_SIGNATURE
        if signature not in (CLASSIFY_SIGNATURE, repo.SIGNATURE_PIXELS):
            raise InvalidArgument(f"Classify uses the {CLASSIFY_SIGNATURE!r} signature; got {signature!r}")
        kind = request.input.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument("input must hold example_list or example_list_with_context")
        examples = getattr(request.input, kind).examples
        check_batch_size(len(examples), self.core.settings.max_batch_size)  # NOTE: before the loop below
        images = []
        for index, example in enumerate(examples):
            feature = example.features.feature.get(repo.IMAGE_FEATURE)
            values = feature.bytes_list.value if feature is not None else []
            if len(values) != 1:
                raise InvalidArgument(
                    f"example {index}: needs exactly one encoded image in the bytes feature "
                    f"{repo.IMAGE_FEATURE!r}"
                )
            images.append(values[0])
        result = await self.core.classify(ref, images, None, deadline_of(context))
        response = serving_pb2.ClassificationResponse(
            model_spec=answered_spec(result.name, result.version, signature)
        )
        for top in result.top:
            classes = response.result.classifications.add().classes
            classes.extend(serving_pb2.Class(label=s.label, score=s.score) for s in top)
        return response

    async def GetModelMetadata(
        self, request: serving_pb2.GetModelMetadataRequest, context: Context
    ) -> serving_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if fields != [SIGNATURE_DEF]:
            raise InvalidArgument(
                f"metadata_field must be [{SIGNATURE_DEF!r}] (the only metadata served); got {fields}"
            )
        metadata = self.core.metadata(model_ref(request.model_spec))
        response = serving_pb2.GetModelMetadataResponse(
            model_spec=answered_spec(metadata.name, metadata.version, "")
        )
        response.model_spec.ClearField("signature_name")
        packed = response.metadata[SIGNATURE_DEF]
        packed.type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        packed.value = signature_defs(metadata).SerializeToString()
        return response


def _info(name: str, dtype: int, shape: list[int]) -> tf_pb.TensorInfo:
    info = tf_pb.TensorInfo(name=name, dtype=dtype)  # type: ignore[arg-type]
    info.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in shape)
    return info


def signature_defs(metadata: ModelMetadata) -> serving_pb2.SignatureDefMap:
    """The signatures of a version, packed as TF Serving packs a SavedModel's."""
    height, width = metadata.image_size
    classes = len(metadata.labels)
    result = serving_pb2.SignatureDefMap()
    probabilities = _info(f"{repo.OUTPUT_NAME}:0", tf_pb.DT_FLOAT, [-1, classes])
    for signature, input_name in SIGNATURE_INPUTS.items():
        sig = result.signature_def[signature]
        sig.method_name = METHOD_PREDICT
        shape, dtype = (
            ([-1, height, width, 3], tf_pb.DT_FLOAT)
            if input_name == repo.INPUT_NAME
            else ([-1], tf_pb.DT_STRING)
        )
        sig.inputs[input_name].CopyFrom(_info(f"{signature}_{input_name}:0", dtype, shape))
        sig.outputs[repo.OUTPUT_NAME].CopyFrom(probabilities)
        if metadata.embedding_size is not None:
            embedding = _info(f"{repo.EMBEDDING_NAME}:0", tf_pb.DT_FLOAT, [-1, metadata.embedding_size])
            sig.outputs[repo.EMBEDDING_NAME].CopyFrom(embedding)
    sig = result.signature_def[CLASSIFY_SIGNATURE]
    sig.method_name = METHOD_CLASSIFY
    sig.inputs["inputs"].CopyFrom(_info("tf_example:0", tf_pb.DT_STRING, [-1]))
    sig.outputs["classes"].CopyFrom(_info("classes:0", tf_pb.DT_STRING, [-1, classes]))
    sig.outputs["scores"].CopyFrom(_info("scores:0", tf_pb.DT_FLOAT, [-1, classes]))
    return result


class ModelService(serving_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def GetModelStatus(
        self, request: serving_pb2.GetModelStatusRequest, context: Context
    ) -> serving_pb2.GetModelStatusResponse:
        return model_status(self.core.status(model_ref(request.model_spec)))


def model_status(status: ModelStatus) -> serving_pb2.GetModelStatusResponse:
    """What TF Serving's GetModelStatus answers (its REST twin is this message as JSON)."""
    response = serving_pb2.GetModelStatusResponse()
    for version in status.versions:
        entry = response.model_version_status.add(version=version.version, state=STATE[version.state])
        entry.status.error_code = error_pb2.UNKNOWN if version.state is State.FAILED else error_pb2.OK
        entry.status.error_message = version.error
    return response
