"""``tlserve serve``: serve a model repository (its flags come from the settings)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tlserve.cli.common import Formatter, local
from tlserve.errors import UsageError
from tlserve.storage import Remote, StorageError

SERVER_EXTRA = (
    "tlserve serve needs the server's packages ({missing} is not installed): pip install 'tlserve[serve]'"
)


def add(sub: argparse._SubParsersAction) -> None:
    try:
        from tlserve.service.flags import add_setting_flags
    except ModuleNotFoundError as exc:  # NOTE: e.g. the train image: train and export must still parse
        if not exc.name or exc.name.split(".")[0] == "tlserve":
            raise  # NOTE: a bug of tlserve's own, not a package left out
        missing = exc.name.split(".")[0]
        p = sub.add_parser("serve", help="serve a model repository (not installed here)", add_help=False)
        p.set_defaults(handler=lambda args: _not_installed(missing), any_arguments=True)
        return
    p = sub.add_parser(
        "serve",
        help="serve a model repository: gRPC and REST (TF Serving API, KServe v2, native), metrics",
        formatter_class=Formatter,
        description=(
            "Serve every model in REPO. On the gRPC port: TensorFlow Serving's PredictionService and\n"
            "ModelService (Predict by signature serving_default or predict_images, Classify,\n"
            "GetModelMetadata, GetModelStatus), the Open Inference Protocol (KServe v2:\n"
            "inference.GRPCInferenceService), the native tlserve.v1.Inference API (Classify, ListModels),\n"
            "grpc.health.v1 (one service per model) and server reflection. On the HTTP port: TF Serving's\n"
            "REST API (/v1/models/...) and the OIP's (/v2/...). Prometheus metrics on a third port.\n"
            "New versions published into REPO (a directory, or a bucket: s3://, gs://) are loaded, warmed\n"
            "up and swapped in while serving; a\n"
            "version that fails to load leaves the previous one serving.\n\n"
            "Every setting has a flag (but the per-model ones and tokens) and a TLSERVE_* variable;\n"
            "flags > TLSERVE_* environment > --config file > defaults, e.g.\n"
            "  TLSERVE_MAX_BATCH_SIZE=16  TLSERVE_MODELS__FLOWERS__BACKEND=tensorflow\n\n"
            "examples:\n"
            "  tlserve serve --repository models\n"
            "  tlserve serve --repository s3://my-bucket/models   # AWS_* credentials, tlserve[s3]\n"
            "  tlserve serve --repository models --grpc-port 0 --metrics-port 0 --version-policy latest:2\n"
            "  grpcurl -plaintext localhost:8500 list\n"
            "  TLSERVE_AUTH_TOKENS=$(cat token) tlserve serve --repository models \\\n"
            "      --tls-cert-file tls.crt --tls-key-file tls.key --health-port 8503\n\n"
            "Security (limits, TLS, mTLS, tokens, threat model): docs/security.md"
        ),
    )
    p.add_argument("--config", type=local, metavar="FILE", help="settings file, JSON/TOML (TLSERVE_CONFIG)")
    add_setting_flags(p)
    p.set_defaults(handler=run)


def _not_installed(missing: str) -> int:
    raise UsageError(SERVER_EXTRA.format(missing=missing))


def run(args: argparse.Namespace) -> int:
    import pydantic

    from tlserve.service.settings import ServerSettings, load_settings

    overrides = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    try:
        settings = load_settings(args.config, **overrides)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            ": ".join(filter(None, (".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, "))))
            for e in exc.errors()
        )  # NOTE: a check across settings (tls, capture) has no field to name
        raise UsageError(f"invalid settings: {problems}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_repository(settings.location, settings.repository_cache_dir)
    from tlserve.service.auth import auth_tokens
    from tlserve.service.server import serve
    from tlserve.service.tls import tls_credentials

    try:  # NOTE: bad TLS files or tokens are usage errors, said before anything starts
        auth_tokens(settings)
        tls_credentials(settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        serve(settings)
    except OSError as exc:
        raise UsageError(str(exc)) from None
    return 0


def check_repository(location: Path | Remote, cache_dir: Path | None) -> None:
    """A directory, or a bucket that can be listed with a cache that can be written: said before
    anything starts."""
    if isinstance(location, Path):
        if not location.is_dir():
            raise UsageError(f"model repository {location} is not a directory (export a model into it "
                             "with: tlserve export RUN_DIR --repository DIR --name NAME)")  # fmt: skip
        return
    try:
        location.scan()
    except StorageError as exc:
        raise UsageError(str(exc)) from None
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=cache_dir).close()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise UsageError(f"--repository-cache-dir {cache_dir} cannot be written: {reason}") from None
