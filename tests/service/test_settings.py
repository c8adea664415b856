"""Settings: sources and their order, validation messages, version policies."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from tlserve.service.settings import ServerSettings, VersionPolicy, load_settings


def test_defaults_follow_the_architecture() -> None:
    settings = load_settings()
    assert (settings.grpc_port, settings.metrics_port) == (8500, 8502)
    assert settings.backend == "onnxruntime" and settings.version_policy == "latest"


def test_flags_over_environment_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tlserve.json"
    config.write_text(json.dumps({"max_batch_size": 4, "grpc_port": 9000, "poll_interval_s": 5}))
    monkeypatch.setenv("TLSERVE_GRPC_PORT", "9001")
    monkeypatch.setenv("TLSERVE_MAX_QUEUE_SIZE", "7")
    settings = load_settings(config, max_queue_size=9)
    assert settings.max_batch_size == 4  # file
    assert settings.grpc_port == 9001  # environment beats file
    assert settings.max_queue_size == 9  # flag beats environment
    assert settings.poll_interval_s == 5


def test_toml_file_from_the_environment_with_model_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tlserve.toml"
    config.write_text(
        'backend = "onnxruntime"\n[models.flowers]\nbackend = "tensorflow"\nversion_labels = {stable = 2}\n'
    )
    monkeypatch.setenv("TLSERVE_CONFIG", str(config))
    settings = load_settings()
    assert settings.for_model("flowers").backend == "tensorflow"
    assert settings.for_model("flowers").version_labels == {"stable": 2}
    assert settings.for_model("other").backend == "onnxruntime"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLSERVE_MODELS__FLOWERS__PRECISION", "int8")
    monkeypatch.setenv("TLSERVE_PROVIDERS", '["cuda", "cpu"]')
    settings = load_settings()
    assert settings.for_model("flowers").precision == "int8"
    assert settings.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"grpc_port": 70000}, "grpc_port"),
        ({"backend": "torch"}, "backend"),
        ({"version_policy": "newest"}, "version_policy"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_bad_values_name_the_setting(values: dict[str, object], field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        ServerSettings.model_validate(values)


def test_bad_config_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_settings(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"grcp_port": 1}')
    with pytest.raises(ValueError, match=r"unknown setting.*grcp_port"):
        load_settings(unknown)
    with pytest.raises(ValueError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("latest", [5]), ("latest:3", [2, 3, 5]), ("all", [1, 2, 3, 5]), ("versions:2,4", [2])],
)
def test_version_policy_selects(policy: str, expected: list[int]) -> None:
    assert VersionPolicy(policy).select([1, 2, 3, 5]) == expected


@pytest.mark.parametrize("policy", ["latest:0", "newest", "versions:", "versions:a", "all:2"])
def test_bad_version_policies(policy: str) -> None:
    with pytest.raises(ValueError, match="version policy"):
        VersionPolicy(policy)


def test_connection_settings_become_grpc_options() -> None:
    from tlserve.service.server import channel_options

    plain = dict(channel_options(ServerSettings()))
    assert "grpc.max_connection_age_ms" not in plain and plain["grpc.so_reuseport"] == 0
    tuned = dict(channel_options(ServerSettings(max_connection_age_s=300, keepalive_time_s=20)))
    assert (
        tuned["grpc.max_connection_age_ms"] == 300_000 and tuned["grpc.max_connection_age_grace_ms"] == 30_000
    )
    assert tuned["grpc.keepalive_time_ms"] == 20_000


def test_the_request_budget_must_fit_one_message() -> None:
    with pytest.raises(pydantic.ValidationError, match="max_inflight_request_bytes"):
        ServerSettings(max_message_bytes=64 << 20, max_inflight_request_bytes=32 << 20)
    assert ServerSettings().max_inflight_request_bytes >= ServerSettings().max_message_bytes


def test_image_formats_are_the_signatures_and_can_only_be_narrowed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().allowed_image_formats == ["JPEG", "PNG", "BMP", "GIF"]
    monkeypatch.setenv("TLSERVE_ALLOWED_IMAGE_FORMATS", '["jpg", "png"]')
    assert load_settings().allowed_image_formats == ["JPEG", "PNG"]
    for bad in (["JPEG", "TIFF"], ["WEBP"], []):
        with pytest.raises(pydantic.ValidationError, match="allowed_image_formats takes one or more of JPEG"):
            ServerSettings(allowed_image_formats=bad)
