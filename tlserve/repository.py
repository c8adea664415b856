"""The model repository: the one contract between the offline half (exporters) and the server.

    REPO/NAME/VERSION/                  VERSION: a positive integer, no leading zeros
        saved_model.pb, variables/      a TF Serving SavedModel (when exported)
        assets.extra/tf_serving_warmup_requests
        model.onnx                      fp32, dynamic batch
        model.fp16.onnx                 optional, for CUDA/TensorRT
        model.int8.onnx                 optional, for CPU
        labels.txt                      one label a line, index order
        reference.json                  what the model learnt about its data (``check_reference``)
        manifest.json                   the one description of this version (``Manifest``)

A version becomes visible complete: it is written in a hidden staging directory beside it
(``REPO/NAME/.staging-*``) and renamed into place; ``manifest.json`` is the last file written.
Readers list only integer directory names. The directories name the model and the version, as for
TF Serving: the name and version in the manifest say where the version was first exported
(provenance), so copying a version folder under another number or model name publishes it (the
checksums still protect its files). This module imports neither TensorFlow nor onnxruntime.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"
SAVED_MODEL_FILE = "saved_model.pb"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
STAGING_PREFIX = ".staging-"
REFERENCE_FILE = "reference.json"
REFERENCE_SCHEMA = 1
REFERENCE_QUANTILES = (0.5, 0.9, 0.95, 0.99)
"""The quantiles ``reference.json`` records of distances and novelty scores."""
NOVELTY_QUANTILE = 0.95
"""Novelty is measured in units of each class's training-distance quantile at this level."""
CONFIDENCE_BINS = 20

INPUT_NAME = "image"
IMAGES_INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
EMBEDDING_NAME = "embedding"
"""The second output [N, D]: the pooled features the classifier's head reads (see REFERENCE_FILE)."""
IMAGE_FEATURE = "image/encoded"
"""The bytes feature of a tf.Example that TF Serving's Classify reads the encoded image from."""
SIGNATURE_PIXELS = "serving_default"
SIGNATURE_IMAGES = "predict_images"
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
"""What ``predict_images`` decodes (``tf.io.decode_image``), as Pillow names the formats."""

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
RECOMMENDED_PROVIDERS = {"fp32": [TENSORRT, CUDA, CPU], "fp16": [TENSORRT, CUDA], "int8": [CPU]}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]*$")


class ManifestError(ValueError):
    """A manifest that does not follow the schema."""


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component; raise ValueError saying why not."""
    if not _NAME.fullmatch(name) or name in {".", ".."}:  # NOTE: match() lets "name\n" through ($)
        raise ValueError(
            f"model name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (one path component, no '/' or '..')"
        )
    return name


def is_version_name(name: str) -> bool:
    """A version directory's name: a positive integer without leading zeros."""
    return _VERSION.fullmatch(name) is not None


def versions(model_dir: Path) -> list[int]:
    """The published versions of a model, ascending; staging and other entries are ignored."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name))


RUN_FILE = "run.json"
"""What marks a training run dir (tlserve/training/rundir.py); named here for ``misplaced_root``."""


def misplaced_root(path: Path) -> str:
    """Why ``path`` looks like a model dir, a version dir or a training run dir rather than a
    repository, with the path to give instead; empty when it does not (or does not exist)."""
    if (path / MANIFEST_FILE).is_file():
        return (f"{path} looks like a version directory (it holds {MANIFEST_FILE}), not a repository: "
                f"pass --repository {path.parent.parent}")  # fmt: skip
    if (path / RUN_FILE).is_file():
        return (f"{path} looks like a training run directory (it holds {RUN_FILE}), not a repository: "
                f"export it (tlserve export {path} --repository REPO --name NAME), then pass "
                "--repository REPO")  # fmt: skip
    if any((path / str(v) / MANIFEST_FILE).is_file() for v in versions(path)):
        return f"{path} looks like a model directory, not a repository: pass --repository {path.parent}"
    return ""


def next_version(model_dir: Path) -> int:
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(root: Path, relative_paths: list[str]) -> dict[str, str]:
    """``{relative path: sha256 of its content}``, the form every artifact records."""
    return {rel: sha256_file(root / rel) for rel in relative_paths}


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    """-1 marks a dynamic dimension (the batch)."""
    dtype: str


@dataclass
class InputSpec(TensorSpec):
    layout: str = "NHWC"
    color: str = "RGB"
    value_range: list[float] = field(default_factory=lambda: [0.0, 255.0])
    preprocessing: str = "baked into the graph: feed raw pixels"
    resize: str = "bilinear, no antialias, aspect ratio not kept"


KINDS = ("savedmodel", "onnx")
PRECISIONS = ("fp32", "fp16", "int8")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Artifact:
    kind: str
    """"savedmodel" or "onnx"."""
    files: dict[str, str]
    """``{path relative to the version dir: sha256}``; the first entry is the artifact's main file."""
    bytes: int
    precision: str = "fp32"
    opset: int | None = None
    recommended_providers: list[str] = field(default_factory=list)
    """Execution providers this artifact is meant for, best first; empty when ``recommended`` is
    false. A server choosing among artifacts should only pick recommended ones."""
    recommended: bool = True
    notes: list[str] = field(default_factory=list)
    """Why an artifact is not recommended, or what its figures mean."""
    parity: dict[str, Any] = field(default_factory=dict)
    """Measured against Keras: images, max_abs_diff, top1_agreement, tolerance, providers."""
    accuracy: dict[str, Any] = field(default_factory=dict)
    """For int8: top-1 accuracy of fp32 and this artifact on the validation data, and the delta."""
    latency_ms: dict[str, Any] = field(default_factory=dict)
    """Batch-1 latency measured at export time: p50, and the providers or runtime used."""


@dataclass
class Manifest:
    name: str
    version: int
    created: str
    labels: list[str]
    input: InputSpec
    outputs: list[TensorSpec]
    base: dict[str, Any]
    """The base network and the training mode."""
    validation: dict[str, Any]
    """Validation metrics of the run (accuracy, loss, images)."""
    signatures: dict[str, Any]
    artifacts: list[Artifact]
    schema: int = SCHEMA_VERSION
    labels_sha256: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    """Where it came from: run dir, tlserve and library versions."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """Confidence calibration (tlserve.exporters.calibration): requested, method ("temperature" or
    "none"), the temperature baked into every artifact, bins, images, ece_before, ece_after,
    ece_after_heldout, nll_before, nll_after, note. Empty for versions exported before it existed."""
    embedding: dict[str, Any] = field(default_factory=dict)
    """The second output of every artifact, ``{"name": "embedding", "shape": [-1, D], "dtype":
    "float32"}``: the pooled features the head reads. Empty for versions exported before it. NOTE:
    not in ``outputs``, which stays the one output every server release reads, so a server from
    before it still loads (and ignores it) a version that has it."""
    reference: dict[str, Any] = field(default_factory=dict)
    """The reference statistics (``REFERENCE_FILE``, see ``check_reference``): file, sha256,
    training_images, validation_images, dimension; or only a note saying why there are none. Empty
    for versions exported before they existed."""

    @property
    def embedding_size(self) -> int | None:
        """D of the ``embedding`` output; None for a version without one."""
        return int(self.embedding["shape"][1]) if self.embedding else None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input.shape[1], self.input.shape[2]

    def artifact(self, kind: str, precision: str = "fp32") -> Artifact | None:
        for artifact in self.artifacts:
            if artifact.kind == kind and artifact.precision == precision:
                return artifact
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, version_dir: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        (version_dir / MANIFEST_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"invalid manifest: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA_VERSION:
            raise ManifestError(f"unsupported manifest schema {data.get('schema')!r}")
        try:
            manifest = cls(
                name=str(data["name"]),
                version=int(data["version"]),
                created=str(data["created"]),
                labels=[str(x) for x in data["labels"]],
                input=InputSpec(**data["input"]),
                outputs=[TensorSpec(**o) for o in data["outputs"]],
                base=dict(data["base"]),
                validation=dict(data["validation"]),
                signatures=dict(data["signatures"]),
                artifacts=[Artifact(**a) for a in data["artifacts"]],
                schema=int(data["schema"]),
                labels_sha256=str(data.get("labels_sha256", "")),
                source=dict(data.get("source", {})),
                calibration=dict(data.get("calibration", {})),
                embedding=dict(data.get("embedding", {})),
                reference=dict(data.get("reference", {})),
            )
            manifest.validate()
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ManifestError(f"invalid manifest: {type(exc).__name__}: {exc}") from exc
        return manifest

    def validate(self) -> None:
        """Raise ManifestError unless every field a reader relies on makes sense."""
        shape = list(self.input.shape)
        if len(shape) != 4 or shape[3] != 3 or not all(isinstance(d, int) for d in shape):
            raise ManifestError(f"input shape must be [N, H, W, 3] integers; got {shape}")
        if len(self.outputs) != 1 or self.outputs[0].shape[-1] != len(self.labels):
            raise ManifestError("expected one output as wide as the number of labels")
        if self.embedding:
            dims = self.embedding.get("shape")
            if (
                self.embedding.get("name") != EMBEDDING_NAME
                or not isinstance(dims, list)
                or len(dims) != 2
                or not isinstance(dims[1], int)
                or isinstance(dims[1], bool)
                or dims[1] < 1
            ):
                raise ManifestError(
                    f"embedding must be {{'name': {EMBEDDING_NAME!r}, 'shape': [-1, D], ...}}"
                )
        if self.version < 1:
            raise ManifestError(f"version must be a positive integer; got {self.version}")
        if not self.artifacts:
            raise ManifestError("no artifacts")
        if self.calibration:
            temperature = self.calibration.get("temperature")
            if not isinstance(temperature, int | float) or not 0 < temperature < float("inf"):
                raise ManifestError(f"calibration.temperature must be a positive number; got {temperature!r}")
            for key in ("ece_before", "ece_after", "ece_after_heldout"):
                value = self.calibration.get(key)
                if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
                    raise ManifestError(f"calibration.{key} must be in [0, 1]; got {value!r}")
        if self.reference.get("file") is not None:
            if self.reference["file"] != REFERENCE_FILE:
                raise ManifestError(
                    f"reference.file must be {REFERENCE_FILE}; got {self.reference['file']!r}"
                )
            if not _SHA256.match(str(self.reference.get("sha256"))):
                raise ManifestError(
                    f"reference.sha256 {self.reference.get('sha256')!r} is not a sha256 hex digest"
                )
        for artifact in self.artifacts:
            if artifact.kind not in KINDS or artifact.precision not in PRECISIONS:
                raise ManifestError(f"unknown artifact kind/precision {artifact.kind}/{artifact.precision}")
            if not isinstance(artifact.files, dict) or not artifact.files:
                raise ManifestError(f"{artifact.kind}: files must map paths to sha256")
            for path, digest in artifact.files.items():
                parts = Path(path).parts
                if Path(path).is_absolute() or ".." in parts or not parts:
                    raise ManifestError(f"artifact path {path!r} leaves the version dir")
                if not _SHA256.match(str(digest)):
                    raise ManifestError(f"artifact file {path}: {digest!r} is not a sha256 hex digest")

    @property
    def exported_as(self) -> str:
        """``NAME/VERSION`` where this version was first exported (provenance, not its address)."""
        return f"{self.name}/{self.version}"

    @classmethod
    def read(cls, version_dir: Path) -> Manifest:
        """Read and validate ``version_dir/manifest.json``. The name and version it records may
        differ from the directories' (a copied version): ``exported_as`` keeps them."""
        try:
            data = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ManifestError(f"cannot read {version_dir / MANIFEST_FILE}: {exc}") from exc
        return cls.from_dict(data)


def verify_checksums(version_dir: Path, manifest: Manifest) -> list[str]:
    """Files (labels.txt included) missing or not matching their recorded sha256; empty when all do."""
    expected = {path: digest for a in manifest.artifacts for path, digest in a.files.items()}
    if manifest.labels_sha256:
        expected[LABELS_FILE] = manifest.labels_sha256
    if manifest.reference.get("file"):
        expected[REFERENCE_FILE] = str(manifest.reference["sha256"])
    bad = []
    for path, digest in expected.items():
        file = version_dir / path
        if not file.is_file() or sha256_file(file) != digest:
            bad.append(path)
    return bad


def _numbers(value: Any, what: str, length: int | None = None) -> list[float]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise ManifestError(f"{REFERENCE_FILE}: {what} must be a list of {length or 'some'} numbers")
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise ManifestError(f"{REFERENCE_FILE}: {what} holds {x!r}, not a finite number")
    return [float(x) for x in value]


def check_reference(data: Any, labels: list[str]) -> dict[str, Any]:
    """``data`` (a parsed ``reference.json``) if it is sound for a model with ``labels``; ManifestError
    naming the field otherwise. Checked without numpy: the server reads it before using it.

    Fields: schema; labels; priors.counts/shares (training images per class); embedding.dimension,
    centroids (one per class, None for a class without training images), quantiles (``REFERENCE_QUANTILES``),
    distance_quantiles (per class, increasing), novelty_quantile and novelty_scale (per class, > 0);
    optionally confidence (bins, validation_counts) and validation_novelty (quantiles, values)."""
    if not isinstance(data, dict) or data.get("schema") != REFERENCE_SCHEMA:
        raise ManifestError(f"{REFERENCE_FILE}: not a schema {REFERENCE_SCHEMA} reference file")
    if data.get("labels") != labels:
        raise ManifestError(f"{REFERENCE_FILE}: its labels differ from the version's")
    n = len(labels)
    try:
        counts = _numbers(data["priors"]["counts"], "priors.counts", n)
        _numbers(data["priors"]["shares"], "priors.shares", n)
        if any(c < 0 for c in counts):
            raise ManifestError(f"{REFERENCE_FILE}: priors.counts must not be negative")
        embedding = data["embedding"]
        dimension = embedding["dimension"]
        if not isinstance(dimension, int) or dimension < 1:
            raise ManifestError(f"{REFERENCE_FILE}: embedding.dimension must be a positive integer")
        if list(embedding["quantiles"]) != list(REFERENCE_QUANTILES):
            raise ManifestError(f"{REFERENCE_FILE}: embedding.quantiles must be {list(REFERENCE_QUANTILES)}")
        centroids, spreads = embedding["centroids"], embedding["distance_quantiles"]
        if (
            not isinstance(centroids, list)
            or len(centroids) != n
            or not isinstance(spreads, list)
            or len(spreads) != n
        ):
            raise ManifestError(f"{REFERENCE_FILE}: embedding needs one centroid and spread per label")
        for index, (centre, spread) in enumerate(zip(centroids, spreads, strict=True)):
            if (centre is None) != (spread is None):
                raise ManifestError(
                    f"{REFERENCE_FILE}: class {labels[index]!r} has a centroid or a spread, not both"
                )
            if centre is None:
                continue
            _numbers(centre, f"embedding.centroids[{index}]", dimension)
            values = _numbers(spread, f"embedding.distance_quantiles[{index}]", len(REFERENCE_QUANTILES))
            if any(b < a for a, b in itertools.pairwise(values)) or values[0] < 0:
                raise ManifestError(
                    f"{REFERENCE_FILE}: embedding.distance_quantiles[{index}] must increase from 0 up"
                )
        if all(c is None for c in centroids):
            raise ManifestError(f"{REFERENCE_FILE}: no class has a centroid")
        if embedding["novelty_quantile"] != NOVELTY_QUANTILE:
            raise ManifestError(f"{REFERENCE_FILE}: embedding.novelty_quantile must be {NOVELTY_QUANTILE}")
        if any(s <= 0 for s in _numbers(embedding["novelty_scale"], "embedding.novelty_scale", n)):
            raise ManifestError(f"{REFERENCE_FILE}: embedding.novelty_scale must be positive")
        if "confidence" in data:
            _numbers(data["confidence"]["validation_counts"], "confidence.validation_counts", CONFIDENCE_BINS)
        if "validation_novelty" in data:
            _numbers(
                data["validation_novelty"]["values"], "validation_novelty.values", len(REFERENCE_QUANTILES)
            )
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{REFERENCE_FILE}: missing or malformed field {exc}") from exc
    return data


def read_reference(version_dir: Path, manifest: Manifest) -> dict[str, Any] | None:
    """The version's checked reference statistics; None when it was exported without them."""
    if not manifest.reference.get("file"):
        return None
    try:
        data = json.loads((version_dir / REFERENCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read {version_dir / REFERENCE_FILE}: {exc}") from exc
    return check_reference(data, manifest.labels)
