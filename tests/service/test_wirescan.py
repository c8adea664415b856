"""Counting protobuf fields on the wire before parsing (tlserve/service/transport/wirescan.py)."""

from __future__ import annotations

import numpy as np

from tlserve.service.transport.wirescan import SCAN_FROM_BYTES, limit_for, max_fields, within
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb2
from tlserve.service.wire.tfs import serving_pb2
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2

LIMIT = max_fields(32)


def test_valid_requests_of_a_full_batch_are_within_the_budget() -> None:
    classify = serving_pb2.ClassificationRequest()
    classify.model_spec.name = "flowers"
    for _ in range(32):
        example = classify.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(b"\xff" * 100_000)
        for k in range(20):  # other features: labels, sizes, ids
            example.features.feature[f"feature/{k}"].int64_list.value.append(k)
    native = inference_pb2.ClassifyRequest(model="flowers", images=[b"\xff" * 100_000] * 32, top_k=5)
    predict = serving_pb2.PredictRequest()
    tensor = predict.inputs["image"]
    tensor.dtype = tf_pb.DT_FLOAT
    tensor.float_val.extend(np.zeros(8 * 224 * 224 * 3, np.float32).tolist())  # packed: one field
    infer = oip_pb2.ModelInferRequest(model_name="flowers", raw_input_contents=[b"\0" * 1_000_000])
    infer.inputs.add(name="image", datatype="FP32", shape=[32, 224, 224, 3])
    for message in (classify, native, predict, infer):
        assert within(message.SerializeToString(), message.DESCRIPTOR, LIMIT), type(message).__name__


def test_millions_of_tiny_fields_are_found_without_parsing_them() -> None:
    native = inference_pb2.ClassifyRequest(model="flowers", images=[b"ab"] * (LIMIT + 1))
    assert not within(native.SerializeToString(), native.DESCRIPTOR, LIMIT)
    example = serving_pb2.ExampleList()
    example.examples.add().features.feature["image/encoded"].bytes_list.value.append(b"x")
    examples = example.SerializeToString() * 2000
    example_list = b"\x0a" + _varint(len(examples)) + examples  # Input.example_list
    request = b"\x12" + _varint(len(example_list)) + example_list  # ClassificationRequest.input
    assert not within(request, serving_pb2.ClassificationRequest.DESCRIPTOR, LIMIT)  # 2,000 examples
    assert within(request, serving_pb2.ClassificationRequest.DESCRIPTOR, 20_000)


def test_malformed_data_is_left_to_the_parser() -> None:
    for data in (b"\xff" * 20, b"\x0a\xff\xff\xff\xff\x0f", b"\x0b\x0c", b"\x0a\x05ab"):
        assert within(data, serving_pb2.PredictRequest.DESCRIPTOR, LIMIT)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def test_a_full_batch_of_examples_with_many_features_is_within_the_budget_of_its_size() -> None:
    classify = serving_pb2.ClassificationRequest()
    classify.model_spec.name = "flowers"
    for _ in range(32):
        example = classify.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(b"\xff" * 40_000)
        for k in range(50):
            example.features.feature[f"feature/{k}"].float_list.value.append(k / 2)
    data = classify.SerializeToString()
    assert len(data) >= SCAN_FROM_BYTES
    assert not within(data, classify.DESCRIPTOR, LIMIT)  # more fields than the batch alone allows
    assert within(data, classify.DESCRIPTOR, limit_for(LIMIT, len(data)))


def test_millions_of_tiny_examples_exceed_the_budget_of_their_size() -> None:
    example = serving_pb2.ExampleList()
    example.examples.add().features.feature["image/encoded"].bytes_list.value.append(b"x")
    examples = example.SerializeToString() * 200_000
    inner = b"\x0a" + _varint(len(examples)) + examples  # Input.example_list
    request = b"\x12" + _varint(len(inner)) + inner
    assert not within(request, serving_pb2.ClassificationRequest.DESCRIPTOR, limit_for(LIMIT, len(request)))
