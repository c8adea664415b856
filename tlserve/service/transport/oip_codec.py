"""Open Inference Protocol (KServe v2) tensors <-> numpy, checked as the protocol requires.

A request has exactly one input: ``image`` FP32 or UINT8 [N, H, W, 3] (RGB 0..255) or ``images`` BYTES [N]
(encoded JPEG/PNG/BMP/GIF), as typed ``contents`` or as ``raw_input_contents`` (BYTES raw: each element a
4-byte little-endian length, then the bytes). Every size is checked with Python integers first.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from tlserve import repository as repo
from tlserve.service.core import check_batch_size
from tlserve.service.errors import InvalidArgument
from tlserve.service.parsing import parse_count
from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as pb

ITEM_BYTES = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
              "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2, "BYTES": 0}  # fmt: skip
EXPECTED = {repo.INPUT_NAME: ("FP32", "UINT8"), repo.IMAGES_INPUT_NAME: ("BYTES",)}
OTHER_INPUT = {
    (repo.INPUT_NAME, "BYTES"): f" (encoded images go in as input {repo.IMAGES_INPUT_NAME!r}, BYTES [N])",
    (repo.IMAGES_INPUT_NAME, "FP32"): f" (pixels go in as input {repo.INPUT_NAME!r}, FP32 [N, H, W, 3])",
    (repo.IMAGES_INPUT_NAME, "UINT8"): f" (pixels go in as input {repo.INPUT_NAME!r}, UINT8 [N, H, W, 3])",
}
"""What to say when a request sends the other input's datatype under an input's name."""
CLASSIFICATION = "classification"
MAX_RANK = 8


@dataclass(frozen=True)
class Input:
    name: str
    pixels: np.ndarray | None = None
    images: list[bytes] | None = None
    raw: bool = False
    """The request sent raw_input_contents (the response answers in kind)."""

    @property
    def values(self) -> np.ndarray | list[bytes]:
        """The pixels, or the encoded images."""
        return self.pixels if self.pixels is not None else self.images or []


def _has_typed(contents: pb.InferTensorContents) -> bool:
    return any(contents.ListFields())


def parse_input(request: pb.ModelInferRequest, max_elements: int, max_batch: int) -> Input:
    """The request's one input, checked; a BYTES input of more than ``max_batch`` elements is refused
    from its shape, before any element is split off or copied (16 M empty elements cost 11 s)."""
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InvalidArgument(f"expected one input, {repo.INPUT_NAME} (FP32 or UINT8 [N, H, W, 3]) or "
                              f"{repo.IMAGES_INPUT_NAME} (BYTES [N]); got {names}")  # fmt: skip
    tensor = request.inputs[0]
    if tensor.datatype not in ITEM_BYTES:
        raise InvalidArgument(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
    if tensor.name not in EXPECTED:
        raise InvalidArgument(
            f"unknown input {tensor.name!r}: expected {repo.INPUT_NAME} or {repo.IMAGES_INPUT_NAME}"
        )
    if tensor.datatype not in EXPECTED[tensor.name]:
        wanted = " or ".join(EXPECTED[tensor.name])
        raise InvalidArgument(f"input {tensor.name!r} must be {wanted}; got {tensor.datatype}"
                              f"{OTHER_INPUT.get((tensor.name, tensor.datatype), '')}")  # fmt: skip
    shape = list(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 or d > max_elements for d in shape):
        raise InvalidArgument(f"input {tensor.name!r}: invalid shape {shape}")
    count = math.prod(shape)
    if count > max_elements or math.prod(d for d in shape if d) > max_elements:  # NOTE: see tfs_codec
        raise InvalidArgument(
            f"input {tensor.name!r}: shape {shape} has {count} elements, above {max_elements}"
        )
    if tensor.name == repo.IMAGES_INPUT_NAME:
        if len(shape) != 1:
            raise InvalidArgument(
                f"input {tensor.name!r} must have shape [N] (one encoded image each); got {shape}"
            )
        check_batch_size(count, max_batch)
    raw = list(request.raw_input_contents)
    typed = _has_typed(tensor.contents)
    if raw and typed:
        raise InvalidArgument("raw_input_contents and typed contents are both set; use one")
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents entries for {len(request.inputs)} input(s)")
    if tensor.name == repo.INPUT_NAME:
        pixels = _numbers(tensor, shape, count, raw[0] if raw else None)
        return Input(tensor.name, pixels=pixels, raw=bool(raw))
    if not raw and len(tensor.contents.bytes_contents) != count:
        raise InvalidArgument(
            f"input {tensor.name!r}: {len(tensor.contents.bytes_contents)} elements for shape {shape}"
        )
    images = _split_bytes(raw[0], count, tensor.name) if raw else list(tensor.contents.bytes_contents)
    if len(images) != count:
        raise InvalidArgument(f"input {tensor.name!r}: {len(images)} elements for shape {shape}")
    return Input(tensor.name, images=images, raw=bool(raw))


def _numbers(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], count: int, raw: bytes | None
) -> np.ndarray:
    """An FP32 or UINT8 tensor as float32 or uint8 (raw bytes: a view, no copy)."""
    uint8 = tensor.datatype == "UINT8"
    if raw is not None:
        size = ITEM_BYTES[tensor.datatype]
        if len(raw) != count * size:
            raise InvalidArgument(f"input {tensor.name!r}: {len(raw)} raw bytes; {tensor.datatype} {shape} "
                                  f"needs {count * size}")  # fmt: skip
        return np.frombuffer(raw, dtype=np.uint8 if uint8 else "<f4").reshape(shape)
    field = "uint_contents" if uint8 else "fp32_contents"
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgument(f"input {tensor.name!r}: {len(values)} {field} for shape {shape} ({count})")
    if not uint8:
        return np.asarray(values, dtype=np.float32).reshape(shape)
    wide = np.asarray(values, dtype=np.uint32)
    if count and int(wide.max()) > 255:  # NOTE: uint_contents is uint32; UINT8 holds 0..255
        raise InvalidArgument(f"input {tensor.name!r}: UINT8 values must be 0..255; got {int(wide.max())}")
    return wide.astype(np.uint8).reshape(shape)


def _split_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES raw contents: each element a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"input {name!r}: truncated length prefix at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"input {name!r}: element {len(items)} declares {length} bytes, "
                                  f"{len(raw) - offset} left")  # fmt: skip
        items.append(raw[offset : offset + length])
        offset += length
        if len(items) > count:
            break
    return items


OUTPUTS = (repo.OUTPUT_NAME, repo.EMBEDDING_NAME)
UNKNOWN_PARAMETERS = ("unknown_below", "unknown_novelty_above")
"""Parameters of the ``probabilities`` output beside ``classification``: the model's settings of the
same names for this request."""


@dataclass(frozen=True)
class Requested:
    names: list[str]
    """The outputs asked for, in order; empty: every output the version has, as the protocol says."""
    top_k: int = 0
    """k when ``probabilities`` asks for the classification extension, else 0."""
    unknown: dict[str, float] = field(default_factory=dict)
    """``UNKNOWN_PARAMETERS`` the request gives."""


def requested_outputs(request: pb.ModelInferRequest) -> Requested:
    names = [o.name for o in request.outputs]
    if len(set(names)) != len(names) or any(n not in OUTPUTS for n in names):
        raise InvalidArgument(
            f"outputs {names}: the outputs are {repo.OUTPUT_NAME!r} and {repo.EMBEDDING_NAME!r}, "
            "each at most once"
        )
    top_k, unknown = 0, {}
    for output in request.outputs:
        given = [p for p in (CLASSIFICATION, *UNKNOWN_PARAMETERS) if p in output.parameters]
        if given and output.name != repo.OUTPUT_NAME:
            raise InvalidArgument(f"the {given[0]} parameter applies to {repo.OUTPUT_NAME!r} only")
        if CLASSIFICATION in output.parameters:
            parameter = output.parameters[CLASSIFICATION]
            if parameter.WhichOneof("parameter_choice") != "int64_param":
                raise InvalidArgument("the classification parameter (the top-k) must be an int64_param")
            top_k = parse_count(parameter.int64_param, "the classification parameter (the top-k)")
        for name in UNKNOWN_PARAMETERS:
            if name in output.parameters:
                parameter = output.parameters[name]
                kind = parameter.WhichOneof("parameter_choice")
                value = parameter.double_param if kind == "double_param" else None
                low, high = (0.0, 1.0) if name == "unknown_below" else (0.0, float("inf"))
                if (
                    value is None
                    or not low <= value <= high
                    or (name == "unknown_novelty_above" and value <= 0)
                ):
                    raise InvalidArgument(
                        f"the {name} parameter must be a double_param "
                        + ("from 0 to 1" if name == "unknown_below" else "above 0")
                    )
                unknown[name] = value
    if unknown and not top_k:
        raise InvalidArgument(f"{', '.join(unknown)} needs the classification parameter (the top-k) too")
    return Requested(names, top_k, unknown)
