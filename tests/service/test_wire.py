"""tlserve's own wire code: reproducible from protos/, and wire-compatible with the official stubs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tlserve.service.wire.tfs import serving_pb2, tensorflow_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _official() -> dict[str, object]:
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        input_pb2,
        model_pb2,
        model_service_pb2,
        predict_pb2,
        prediction_service_pb2,
        status_pb2,
    )

    modules = [example_pb2, feature_pb2, tensor_pb2, tensor_shape_pb2, types_pb2, meta_graph_pb2,
               classification_pb2, get_model_metadata_pb2, get_model_status_pb2, input_pb2, model_pb2,
               predict_pb2, status_pb2, model_service_pb2, prediction_service_pb2]  # fmt: skip
    found: dict[str, object] = {}
    for module in modules:
        pool = module.DESCRIPTOR.pool
        for name in list(module.DESCRIPTOR.message_types_by_name) + list(
            module.DESCRIPTOR.enum_types_by_name
        ):
            full = f"{module.DESCRIPTOR.package}.{name}"
            is_message = name in module.DESCRIPTOR.message_types_by_name
            found[full] = pool.FindMessageTypeByName(full) if is_message else pool.FindEnumTypeByName(full)
        for name in module.DESCRIPTOR.services_by_name:
            found[f"{module.DESCRIPTOR.package}.{name}"] = module.DESCRIPTOR.services_by_name[name]
    return found


def _messages(descriptor: object) -> list[object]:
    nested = [d for d in descriptor.nested_types if not d.GetOptions().map_entry]  # type: ignore[attr-defined]
    return [descriptor, *(m for n in nested for m in _messages(n))]


@pytest.mark.parametrize("module", [tensorflow_pb2, serving_pb2], ids=["tensorflow", "serving"])
def test_messages_and_services_match_the_official_stubs(module: object) -> None:
    official = _official()
    file = module.DESCRIPTOR  # type: ignore[attr-defined]
    ours = [m for top in file.message_types_by_name.values() for m in _messages(top)]
    checked = 0
    for message in ours:
        theirs = official.get(message.full_name) or official[message.containing_type.full_name]
        if message.containing_type is not None:
            theirs = theirs.nested_types_by_name[message.name]  # type: ignore[attr-defined]
        for field in message.fields:
            other = theirs.fields_by_name[field.name]  # type: ignore[attr-defined]
            assert (field.number, field.type, field.is_repeated) == (
                other.number,
                other.type,
                other.is_repeated,
            ), f"{message.full_name}.{field.name}"
            if field.message_type is not None:
                assert field.message_type.full_name == other.message_type.full_name
            if field.enum_type is not None:
                assert field.enum_type.full_name == other.enum_type.full_name
            checked += 1
    for enum in file.enum_types_by_name.values():
        theirs = official[enum.full_name]
        for value in enum.values:
            assert theirs.values_by_name[value.name].number == value.number  # type: ignore[attr-defined]
    for service in file.services_by_name.values():
        theirs = official[service.full_name]
        for method in service.methods:
            other = theirs.methods_by_name[method.name]  # type: ignore[attr-defined]
            assert (method.input_type.full_name, method.output_type.full_name) == (
                other.input_type.full_name, other.output_type.full_name,
            )  # fmt: skip
    assert checked > 20


def test_our_messages_coexist_with_tensorflow_in_one_process() -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    ours = serving_pb2.PredictRequest()
    ours.model_spec.name = "m"
    ours.model_spec.version.value = 3
    ours.inputs["image"].CopyFrom(
        tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    )
    ours.inputs["image"].tensor_shape.dim.add(size=2)
    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    assert theirs.model_spec.version.value == 3
    assert tf.make_ndarray(theirs.inputs["image"]).tolist() == [1.0, 2.0]


def test_every_generated_servicer_method_is_implemented() -> None:
    """grpcio-tools writes `raise NotImplementedError` into each servicer base class; ours must
    override every method the protos declare, so that stub can never answer a call."""
    from tlserve.service.transport import native, oip, tfs
    from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
    from tlserve.service.wire.tfs import serving_pb2_grpc
    from tlserve.service.wire.tlserve.v1 import inference_pb2, inference_pb2_grpc

    pairs = [
        (tfs.PredictionService, serving_pb2_grpc.PredictionServiceServicer, serving_pb2, "PredictionService"),
        (tfs.ModelService, serving_pb2_grpc.ModelServiceServicer, serving_pb2, "ModelService"),
        (native.InferenceService, inference_pb2_grpc.InferenceServicer, inference_pb2, "Inference"),
        (oip.InferenceService, grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer, grpc_predict_v2_pb2,
         "GRPCInferenceService"),
    ]  # fmt: skip
    for ours, base, module, service in pairs:
        methods = [m.name for m in module.DESCRIPTOR.services_by_name[service].methods]
        assert methods
        for name in methods:
            assert getattr(ours, name) is not getattr(base, name), (
                f"{ours.__name__}.{name} is the generated stub"
            )
