"""A typed Python client for a tlserve server: native API and TF Serving API, a deadline on every call.

    with Client("localhost:8500") as client:
        for prediction in client.classify("flowers", [open("rose.jpg", "rb").read()]).predictions:
            print(prediction[0].label, prediction[0].score)

Needs only grpcio and protobuf (no TensorFlow): it uses tlserve's own wire code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tlserve import repository as repo
from tlserve.service.wire.tfs import serving_pb2, serving_pb2_grpc
from tlserve.service.wire.tfs import tensorflow_pb2 as tf_pb
from tlserve.service.wire.tlserve.v1 import inference_pb2 as pb
from tlserve.service.wire.tlserve.v1 import inference_pb2_grpc

DEFAULT_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Label:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    predictions: list[list[Label]]
    """One list per image, best first."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    state: str
    error: str
    labels: list[str]
    height: int
    width: int
    backend: str
    providers: list[str]
    artifact: str
    base: str


@dataclass(frozen=True)
class Tls:
    """TLS for the client: ``ca`` verifies the server (None: the system's roots); ``cert`` and ``key``
    (PEM bytes) are the client's own certificate for mutual TLS."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None
    """Name to verify the server's certificate against, when it differs from the target's host."""

    @classmethod
    def from_files(
        cls, ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
        server_name: str | None = None,
    ) -> Tls:  # fmt: skip
        read = lambda p: None if p is None else Path(p).read_bytes()  # noqa: E731
        return cls(read(ca), read(cert), read(key), server_name)


def channel(target: str, tls: Tls | None = None) -> grpc.Channel:
    """A channel with tlserve's message limits; TLS when ``tls`` is given."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    return grpc.secure_channel(target, credentials, options=options)


class Client:
    def __init__(
        self,
        target: str = "localhost:8500",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: Tls | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: a bearer token sent with every call (servers started with auth tokens)."""
        self.target = target
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = channel(target, tls)
        self._native = inference_pb2_grpc.InferenceStub(self._channel)
        self._prediction = serving_pb2_grpc.PredictionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, service: str = "", timeout_s: float = 60.0) -> None:
        """Block until health says SERVING for ``service`` ("" = the server); TimeoutError if not."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"no gRPC server at {self.target} within {timeout_s:.0f} s") from None
        stream = self._health.Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s, metadata=self._metadata
        )
        try:
            for response in stream:
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            stream.cancel()
        raise TimeoutError(f"{service or 'the server'} not SERVING within {timeout_s:.0f} s")

    def health(self, service: str = "") -> str:
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s, metadata=self._metadata
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def classify(
        self, model: str, images: Sequence[bytes], top_k: int = 5, version: int = 0
    ) -> ClassifyResult:
        """Native API: top-k labels per encoded image."""
        request = pb.ClassifyRequest(model=model, version=version, images=list(images), top_k=top_k)
        response = self._native.Classify(request, timeout=self.timeout_s, metadata=self._metadata)
        predictions = [[Label(x.label, x.index, x.score) for x in p.labels] for p in response.predictions]
        return ClassifyResult(response.model, response.version, predictions)

    def list_models(self) -> dict[str, list[VersionInfo]]:
        response = self._native.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout_s, metadata=self._metadata
        )
        return {
            m.name: [
                VersionInfo(v.version, pb.ModelVersion.State.Name(v.state), v.error, list(v.labels), v.height,
                            v.width, v.backend, list(v.providers), v.artifact, v.base)
                for v in m.versions
            ]
            for m in response.models
        }  # fmt: skip

    def predict_images(self, model: str, images: Sequence[bytes], version: int = 0) -> tuple[int, np.ndarray]:
        """TF Serving API, ``predict_images`` signature: (version that answered, probabilities)."""
        request = serving_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = repo.SIGNATURE_IMAGES
        if version:
            request.model_spec.version.value = version
        tensor = request.inputs[repo.IMAGES_INPUT_NAME]
        tensor.dtype = tf_pb.DT_STRING
        tensor.tensor_shape.dim.add(size=len(images))
        tensor.string_val.extend(images)
        return self._predict(request)

    def predict(self, model: str, pixels: np.ndarray, version: int = 0) -> tuple[int, np.ndarray]:
        """TF Serving API, ``serving_default``: float32 pixels [N, H, W, 3] -> (version, probabilities)."""
        request = serving_pb2.PredictRequest()
        request.model_spec.name = model
        if version:
            request.model_spec.version.value = version
        tensor = request.inputs[repo.INPUT_NAME]
        tensor.dtype = tf_pb.DT_FLOAT
        tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in pixels.shape)
        tensor.tensor_content = np.ascontiguousarray(pixels, dtype=np.float32).tobytes()
        return self._predict(request)

    def _predict(self, request: serving_pb2.PredictRequest) -> tuple[int, np.ndarray]:
        response = self._prediction.Predict(request, timeout=self.timeout_s, metadata=self._metadata)
        out = response.outputs[repo.OUTPUT_NAME]
        shape = [d.size for d in out.tensor_shape.dim]
        return response.model_spec.version.value, np.frombuffer(out.tensor_content, np.float32).reshape(shape)
