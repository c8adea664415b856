"""A typed Python client for a tlserve server: native API and TF Serving API, a deadline on every call.

    with Client("localhost:8500") as client:
        for prediction in client.classify("flowers", [open("rose.jpg", "rb").read()]).predictions:
            print(prediction[0].label, prediction[0].score)

Needs only grpcio and protobuf (no TensorFlow): it uses tlserve's own wire code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tlserve import repository as repo
from tlserve.service import messages
from tlserve.service.wire.tfs import serving_pb2, serving_pb2_grpc
from tlserve.service.wire.tlserve.v1 import inference_pb2 as pb
from tlserve.service.wire.tlserve.v1 import inference_pb2_grpc

DEFAULT_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_PORT, REST_PORT, METRICS_PORT = 8500, 8501, 8502
"""A server's default ports (ARCHITECTURE.md), named in hints when a client reaches the wrong one."""
# NOTE: what gRPC core says when the port it reached answers HTTP/1.x (aiohttp, a metrics exporter)
_HTTP1_ANSWERS = ("Trying to connect an http1.x server", "Failed parsing HTTP/2")
_IMAGE_PREFIX = re.compile(r"^image 0: ")


_SCORES = (repo.OUTPUT_NAME,)
"""What ``predict`` reads: the other outputs (the embedding) are not asked for."""


@dataclass(frozen=True)
class Label:
    label: str
    index: int | None
    """The class's index in the model's labels; None through TF Serving's Classify (it names classes only)."""
    score: float


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    predictions: list[list[Label]]
    """One list per image, best first."""
    embedding: np.ndarray | None = None
    """float32 [N, D] when asked for (``classify(..., embedding=True)``)."""


@dataclass(frozen=True)
class Answer:
    """One image's answer from ``Client.classify_each``: its top labels, or why it was refused."""

    labels: list[Label]
    error: str = ""


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
    exported_as: str
    """Where the manifest says it was exported, NAME/VERSION (another for a copied folder)."""


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


def _refused(error: grpc.RpcError) -> Answer:
    """The answer for an image the server refused on its own (the call held only that image)."""
    return Answer([], _IMAGE_PREFIX.sub("", error.details() or ""))


def describe_rpc_error(target: str, error: grpc.RpcError) -> str:
    """One line for a failed call: the target, the status and the server's message; when the target
    answers HTTP/1.x (a REST or metrics port), which port that is and where gRPC is instead."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and any(text in details for text in _HTTP1_ANSWERS):
        host, _, port = target.rpartition(":")
        which = {str(REST_PORT): "the REST port", str(METRICS_PORT): "the metrics port"}.get(port)
        what = f"{port} is {which} of a tlserve server" if which else f"port {port} answers HTTP/1.x"
        return (f"{target}: UNAVAILABLE: not a gRPC port ({what}); the gRPC port is {GRPC_PORT} unless "
                f"the server set --grpc-port: try --server {host or 'localhost'}:{GRPC_PORT}")  # fmt: skip
    return f"{target}: {code.name}: {details}"


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
        """Block until health says SERVING for ``service`` ("" = the server); TimeoutError if not
        within ``timeout_s`` in all."""
        deadline = time.monotonic() + timeout_s
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"no gRPC server at {self.target} within {timeout_s:g} s") from None
        stream = self._health.Watch(
            health_pb2.HealthCheckRequest(service=service),
            timeout=max(deadline - time.monotonic(), 0.001),
            metadata=self._metadata,
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
        raise TimeoutError(f"{service or 'the server'} not SERVING at {self.target} within {timeout_s:g} s")

    def health(self, service: str = "") -> str:
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s, metadata=self._metadata
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def classify(
        self, model: str, images: Sequence[bytes], top_k: int = 5, version: int = 0, embedding: bool = False
    ) -> ClassifyResult:
        """Native API: top-k labels per encoded image, and with ``embedding`` each image's embedding."""
        request = messages.classify_request(model, list(images), version, top_k, embedding)
        response = self._native.Classify(request, timeout=self.timeout_s, metadata=self._metadata)
        predictions = [[Label(x.label, x.index, x.score) for x in p.labels] for p in response.predictions]
        vectors = None
        if embedding:
            vectors = np.array([list(p.embedding) for p in response.predictions], dtype=np.float32)
        return ClassifyResult(response.model, response.version, predictions, vectors)

    def classify_each(
        self, model: str, images: Sequence[bytes], top_k: int = 5, version: int = 0, api: str = "native"
    ) -> tuple[int, list[Answer]]:
        """Top-k labels of every image, one ``Answer`` each, through the native API (``classify``)
        or TF Serving's (``classify_examples``): (version that answered, answers).

        A batch the server refuses as invalid (one undecodable image refuses them all) is sent
        again one image at a time, so that each image gets its own answer or its own error. Other
        failures (no server, no such model) raise ``grpc.RpcError``."""
        try:
            return self._top_k(model, images, top_k, version, api)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            if len(images) == 1:
                return 0, [_refused(exc)]
        answered, answers = 0, []
        for image in images:
            try:
                got, (answer,) = self._top_k(model, [image], top_k, version, api)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                answer = _refused(exc)
            else:
                answered = answered or got
            answers.append(answer)
        return answered, answers

    def _top_k(
        self, model: str, images: Sequence[bytes], top_k: int, version: int, api: str
    ) -> tuple[int, list[Answer]]:
        if api == "native":
            result = self.classify(model, images, top_k=top_k, version=version)
            return result.version, [Answer(labels) for labels in result.predictions]
        if api != "tfs":
            raise ValueError(f"api must be 'native' or 'tfs'; got {api!r}")
        result = self.classify_examples(model, images, version=version)
        return result.version, [Answer(labels[:top_k]) for labels in result.predictions]

    def classify_examples(self, model: str, images: Sequence[bytes], version: int = 0) -> ClassifyResult:
        """TF Serving API, Classify: every class of each encoded image (sent as a tf.Example's
        ``image/encoded`` feature) with its score, best first."""
        request = messages.tfs_classify_request(model, images, version)
        response = self._prediction.Classify(request, timeout=self.timeout_s, metadata=self._metadata)
        predictions = [[Label(c.label, None, c.score) for c in each.classes]
                       for each in response.result.classifications]  # fmt: skip
        return ClassifyResult(model, response.model_spec.version.value, predictions)

    def list_models(self) -> dict[str, list[VersionInfo]]:
        response = self._native.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout_s, metadata=self._metadata
        )
        return {
            m.name: [
                VersionInfo(v.version, pb.ModelVersion.State.Name(v.state), v.error, list(v.labels), v.height,
                            v.width, v.backend, list(v.providers), v.artifact, v.base, v.exported_as)
                for v in m.versions
            ]
            for m in response.models
        }  # fmt: skip

    def predict_images(self, model: str, images: Sequence[bytes], version: int = 0) -> tuple[int, np.ndarray]:
        """TF Serving API, ``predict_images`` signature: (version that answered, probabilities)."""
        return self._predict(messages.predict_request(model, images=images, version=version, outputs=_SCORES))

    def predict(self, model: str, pixels: np.ndarray, version: int = 0) -> tuple[int, np.ndarray]:
        """TF Serving API, ``serving_default``: float32 pixels [N, H, W, 3] -> (version, probabilities).
        uint8 pixels go as DT_UINT8, a quarter of the bytes (a server that predates UINT8 input
        refuses them: send float32 to it)."""
        return self._predict(messages.predict_request(model, pixels=pixels, version=version, outputs=_SCORES))

    def _predict(self, request: serving_pb2.PredictRequest) -> tuple[int, np.ndarray]:
        response = self._prediction.Predict(request, timeout=self.timeout_s, metadata=self._metadata)
        out = response.outputs[repo.OUTPUT_NAME]
        shape = [d.size for d in out.tensor_shape.dim]
        return response.model_spec.version.value, np.frombuffer(out.tensor_content, np.float32).reshape(shape)
