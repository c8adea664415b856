"""TensorFlow Serving's TensorProto <-> numpy, without TensorFlow.

Sizes are checked with Python integers before anything is allocated: a tiny proto declaring a huge
shape (with one value to broadcast, or an int64 product that would wrap) is rejected, not allocated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tlserve.service.core import check_batch_size
from tlserve.service.errors import InvalidArgument
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb

MAX_RANK = 8
MAX_DIMENSION = 1 << 31
_NUMERIC: dict[int, tuple[type[np.generic], str]] = {
    tf_pb.DT_FLOAT: (np.float32, "float_val"),
    tf_pb.DT_DOUBLE: (np.float64, "double_val"),
    tf_pb.DT_HALF: (np.float16, "half_val"),
    tf_pb.DT_INT8: (np.int8, "int_val"),
    tf_pb.DT_INT16: (np.int16, "int_val"),
    tf_pb.DT_INT32: (np.int32, "int_val"),
    tf_pb.DT_INT64: (np.int64, "int64_val"),
    tf_pb.DT_UINT8: (np.uint8, "int_val"),
    tf_pb.DT_UINT16: (np.uint16, "int_val"),
    tf_pb.DT_UINT32: (np.uint32, "uint32_val"),
    tf_pb.DT_UINT64: (np.uint64, "uint64_val"),
    tf_pb.DT_BOOL: (np.bool_, "bool_val"),
}

_VALUE_FIELDS = sorted({field for _, field in _NUMERIC.values()} | {"string_val"})


def dtype_name(dtype: int) -> str:
    try:
        return str(tf_pb.DataType.Name(dtype))
    except ValueError:
        return f"unknown dtype {dtype}"


def shape_of(proto: tf_pb.TensorProto, name: str) -> list[int]:
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument(f"input {name!r}: the shape must be known (unknown_rank is set)")
    if len(proto.tensor_shape.dim) > MAX_RANK:
        raise InvalidArgument(f"input {name!r}: rank {len(proto.tensor_shape.dim)} is above {MAX_RANK}")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {name!r}: negative dimension in shape {shape}")
    if any(d > MAX_DIMENSION for d in shape):  # NOTE: also when another dimension is 0
        raise InvalidArgument(f"input {name!r}: a dimension of shape {shape} is above {MAX_DIMENSION}")
    return shape


def to_array(proto: tf_pb.TensorProto, name: str, max_elements: int) -> np.ndarray:
    """A numeric TensorProto as an ndarray; InvalidArgument says what does not add up."""
    if proto.dtype not in _NUMERIC:
        raise InvalidArgument(
            f"input {name!r}: expected a numeric tensor (DT_FLOAT), got {dtype_name(proto.dtype)}"
        )
    dtype, field = _NUMERIC[proto.dtype]
    shape = shape_of(proto, name)
    count = math.prod(shape)
    # NOTE: with a zero dimension the count is 0, but numpy still refuses (ValueError) to make an
    # empty array whose other dimensions multiply past its limits: bound those too
    if count > max_elements or math.prod(d for d in shape if d) > max_elements:
        raise InvalidArgument(
            f"input {name!r}: shape {shape} has {count} elements, above the limit of {max_elements}"
        )
    if proto.tensor_content:
        typed = [f for f in _VALUE_FIELDS if len(getattr(proto, f))]
        if typed:  # NOTE: TensorFlow would silently ignore them; ambiguous input is refused
            raise InvalidArgument(
                f"input {name!r}: both tensor_content and {typed[0]} are set; send the values in one"
            )
        expected = count * np.dtype(dtype).itemsize
        if len(proto.tensor_content) != expected:
            raise InvalidArgument(
                f"input {name!r}: tensor_content has {len(proto.tensor_content)} bytes; shape {shape} of "
                f"{dtype_name(proto.dtype)} needs {expected}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    values = getattr(proto, field)
    if len(values) == count or (len(values) == 1 and count > 0):
        array = _typed(values, dtype, field, name, proto.dtype)
        if dtype is np.float16:  # half_val carries the float16 bit patterns as integers
            array = array.view(np.float16)
        # NOTE: TensorFlow's rule: a single value fills the whole (already bounded) tensor
        return array.reshape(shape) if len(values) == count else np.full(shape, array[0], dtype=dtype)
    raise InvalidArgument(
        f"input {name!r}: {len(values)} values in {field} for shape {shape} ({count} elements)"
    )


def _typed(values: Any, dtype: type[np.generic], field: str, name: str, proto_dtype: int) -> np.ndarray:
    """A repeated value field as ``dtype``, integers range-checked: numpy would wrap an int_val of
    300 into a uint8 of 44 silently."""
    if dtype is np.float16:
        return np.asarray(values, dtype=np.uint16)  # NOTE: half_val holds the bit patterns
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(values, dtype=dtype)
    wide = np.asarray(values, dtype=np.uint64 if field in ("uint32_val", "uint64_val") else np.int64)
    limits = np.iinfo(np.dtype(dtype))
    if wide.size and (int(wide.min()) < limits.min or int(wide.max()) > limits.max):
        raise InvalidArgument(
            f"input {name!r}: a value of {field} is out of range for {dtype_name(proto_dtype)}"
        )
    return wide.astype(dtype)


def to_strings(proto: tf_pb.TensorProto, name: str, max_batch: int) -> list[bytes]:
    """A DT_STRING tensor of shape [N] as N byte strings, N at most ``max_batch`` (checked before the
    strings are copied: 15 M two-byte strings once cost 1.3 s and 800 MB to refuse)."""
    if proto.dtype != tf_pb.DT_STRING:
        raise InvalidArgument(
            f"input {name!r}: expected DT_STRING (encoded images), got {dtype_name(proto.dtype)}"
        )
    shape = shape_of(proto, name)
    if len(shape) != 1:
        raise InvalidArgument(f"input {name!r}: expected shape [N] (one encoded image each), got {shape}")
    check_batch_size(shape[0], max_batch)
    if len(proto.string_val) != shape[0]:
        raise InvalidArgument(f"input {name!r}: {len(proto.string_val)} strings for shape {shape}")
    return list(proto.string_val)


def from_array(array: np.ndarray) -> tf_pb.TensorProto:
    """A float32 ndarray as a TensorProto (tensor_content, as TensorFlow writes large tensors)."""
    proto = tf_pb.TensorProto(
        dtype=tf_pb.DT_FLOAT, tensor_content=np.ascontiguousarray(array, np.float32).tobytes()
    )
    proto.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in array.shape)
    return proto
