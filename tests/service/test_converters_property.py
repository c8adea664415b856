"""Property tests over the request converters: whatever a client sends, a converter either returns
a well-formed result or raises InvalidArgument — never another error, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlserve.service.errors import InvalidArgument
from tlserve.service.transport import oip_codec, tfs_codec
from tlserve.service.transport.oip_rest import to_proto
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as oip_pb
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb

MAX_ELEMENTS = 1 << 16
dims = st.lists(st.integers(min_value=-3, max_value=1 << 62), max_size=10)
small_dims = st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=5)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tensor_protos(draw: st.DrawFn) -> tf_pb.TensorProto:
    proto = tf_pb.TensorProto(dtype=draw(st.integers(min_value=0, max_value=30)))  # type: ignore[arg-type]
    for size in draw(st.one_of(dims, small_dims)):
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    content = draw(st.sampled_from(["none", "bytes", "floats", "ints", "strings"]))
    if content == "bytes":
        proto.tensor_content = draw(st.binary(max_size=256))
    elif content == "floats":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=64)))
    elif content == "ints":
        proto.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=64)))
    elif content == "strings":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=16), max_size=8)))
    return proto


@PROPERTY
@given(tensor_protos())
def test_tfs_tensor_converters(proto: tf_pb.TensorProto) -> None:
    try:
        array = tfs_codec.to_array(proto, "image", MAX_ELEMENTS)
    except InvalidArgument:
        pass
    else:
        assert isinstance(array, np.ndarray) and array.size <= MAX_ELEMENTS
        assert list(array.shape) == [d.size for d in proto.tensor_shape.dim]
    try:
        strings = tfs_codec.to_strings(proto, "images", MAX_ELEMENTS)
    except InvalidArgument:
        pass
    else:
        assert all(isinstance(s, bytes) for s in strings)


@st.composite
def oip_requests(draw: st.DrawFn) -> oip_pb.ModelInferRequest:
    request = oip_pb.ModelInferRequest(model_name="m")
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["image", "images", "x", ""])),
            datatype=draw(st.sampled_from(["FP32", "BYTES", "INT8", "FP99", ""])),
            shape=draw(st.one_of(dims, small_dims)),
        )
        if draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=64)))
        if draw(st.booleans()):
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=4)))
    for _ in range(draw(st.integers(0, 2))):
        request.raw_input_contents.append(draw(st.binary(max_size=300)))
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(name=draw(st.sampled_from(["probabilities", "x"])))
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.integers(-3, 1 << 40))
    return request


@PROPERTY
@given(oip_requests())
def test_oip_converters(request: oip_pb.ModelInferRequest) -> None:
    try:
        given_input = oip_codec.parse_input(request, MAX_ELEMENTS, MAX_ELEMENTS)
    except InvalidArgument:
        pass
    else:
        assert (given_input.pixels is None) != (given_input.images is None)
        if given_input.pixels is not None:
            assert given_input.pixels.dtype == np.float32 and given_input.pixels.size <= MAX_ELEMENTS
    try:
        requested = oip_codec.requested_outputs(request)
    except InvalidArgument:
        pass
    else:
        names = requested.names
        assert requested.top_k >= 0 and set(names) <= {"probabilities", "embedding"}
        assert len(set(names)) == len(names) and set(requested.unknown) <= {
            "unknown_below",
            "unknown_novelty_above",
        }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def http_bodies(draw: st.DrawFn) -> dict[str, object]:
    tensor = draw(
        st.dictionaries(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]), json_values)
    )
    if draw(st.booleans()):
        tensor["shape"] = draw(st.one_of(dims, small_dims))
    if draw(st.booleans()):
        tensor["datatype"] = draw(st.sampled_from(["FP32", "BYTES", "FP99"]))
    body: dict[str, object] = {"inputs": draw(st.one_of(st.just([tensor]), json_values))}
    if draw(st.booleans()):
        body["outputs"] = draw(json_values)
    return body


@PROPERTY
@given(http_bodies(), st.binary(max_size=64))
def test_oip_http_converter(body: dict[str, object], binary: bytes) -> None:
    try:
        request = to_proto("m", "", body, binary, MAX_ELEMENTS)
    except InvalidArgument:
        return
    try:
        oip_codec.parse_input(request, MAX_ELEMENTS, MAX_ELEMENTS)
        oip_codec.requested_outputs(request)
    except InvalidArgument:
        pass


HUGE_WITH_A_ZERO = [0, 106, 106, 10443503, 19650419]  # found by hypothesis: numpy's ValueError, not ours


def test_a_zero_dimension_does_not_hide_a_huge_shape() -> None:
    proto = tf_pb.TensorProto(dtype=tf_pb.DT_FLOAT)
    proto.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in HUGE_WITH_A_ZERO)
    with pytest.raises(InvalidArgument, match="above"):
        tfs_codec.to_array(proto, "image", MAX_ELEMENTS)
    request = oip_pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="image", datatype="FP32", shape=[0, 200, 200, 200])
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgument):
        oip_codec.parse_input(request, MAX_ELEMENTS, MAX_ELEMENTS)
