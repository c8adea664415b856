"""The Kubernetes manifests: every kustomization builds, validates against the Kubernetes schema
(custom resources listed as skipped), agrees with the server's defaults and the Dockerfile, and
passes yamllint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tlserve import storage
from tlserve.service.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BUILDS = [
    "base",
    "overlays/cpu",
    "overlays/gpu",
    "overlays/bucket",
    "overlays/capture",
    "overlays/kserve",
    "training",
]
KUBERNETES = "1.34.0"
# Custom resources kubernetes-validate has no schema for: checked here by kind and fields instead.
SKIPPED_CRDS = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}
STAGES = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M | re.I))


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed")
    return found


def build(path: str) -> list[dict[str, Any]]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(K8S / path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {path: build(path) for path in BUILDS}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


@pytest.mark.parametrize("path", BUILDS)
def test_validates_against_kubernetes(
    built: dict[str, list[dict[str, Any]]], path: str, tmp_path: Path
) -> None:
    docs = [d for d in built[path] if d["kind"] not in SKIPPED_CRDS]
    skipped = {d["kind"] for d in built[path]} & SKIPPED_CRDS
    if docs:
        manifest = tmp_path / "manifest.yaml"
        manifest.write_text(yaml.safe_dump_all(docs))
        command = [tool("kubernetes-validate"), "-k", KUBERNETES, "--strict", "--quiet", str(manifest)]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    for doc in built[path]:  # what the schema check skipped: at least the right API groups
        if doc["kind"] in SKIPPED_CRDS:
            assert doc["apiVersion"].split("/")[0] in {"monitoring.coreos.com", "serving.kserve.io"}
    assert skipped <= SKIPPED_CRDS


def test_ports_and_probes_match_the_server_defaults(built: dict[str, list[dict[str, Any]]]) -> None:
    defaults = ServerSettings.model_fields
    expected = {"grpc": defaults["grpc_port"].default, "http": defaults["http_port"].default,
                "metrics": defaults["metrics_port"].default}  # fmt: skip
    for path in ("base", "overlays/cpu", "overlays/gpu", "overlays/bucket"):
        docs = built[path]
        container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == expected
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == expected["grpc"], probe
        service = one(docs, "Service", "tlserve")
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == expected
        assert all(p.get("appProtocol") for p in service["spec"]["ports"])
        assert one(docs, "Service", "tlserve-headless")["spec"]["clusterIP"] == "None"
        monitor = one(docs, "ServiceMonitor")
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        settings = one(docs, "ConfigMap")["data"]
        assert int(settings["TLSERVE_GRPC_PORT"]) == expected["grpc"]


def test_drain_fits_in_the_termination_grace(built: dict[str, list[dict[str, Any]]]) -> None:
    docs = built["base"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    drain = float(one(docs, "ConfigMap")["data"]["TLSERVE_SHUTDOWN_GRACE_S"])
    pause = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert drain + pause < pod["terminationGracePeriodSeconds"]


def test_pods_are_locked_down(built: dict[str, list[dict[str, Any]]]) -> None:
    for path in ("base", "overlays/gpu", "overlays/bucket", "overlays/capture", "training"):
        kind = "Job" if path == "training" else "Deployment"
        pod = one(built[path], kind)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
    assert one(built["base"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesystem"
    ] is True  # fmt: skip


def test_gpu_overlay_asks_for_a_gpu(built: dict[str, list[dict[str, Any]]]) -> None:
    pod = one(built["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_image_tags_are_dockerfile_targets(built: dict[str, list[dict[str, Any]]]) -> None:
    tags = {}
    for path, docs in built.items():
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec") or doc.get("spec", {})
            for container in pod.get("containers", []):
                tags[path] = container["image"].rsplit(":", 1)[1]
    expected = {
        "base": "serve",
        "overlays/cpu": "serve",
        "overlays/gpu": "serve-gpu",
        "overlays/bucket": "serve",
        "overlays/capture": "serve",
    }
    assert tags == {**expected, "overlays/kserve": "serve", "training": "train"}
    assert set(tags.values()) <= STAGES


def test_bucket_overlay_serves_a_url_with_a_cache_and_an_identity(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    docs = built["overlays/bucket"]
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = one(docs, "ConfigMap")["data"]
    assert container["args"] == ["--repository", "$(TLSERVE_REPOSITORY)"]  # the image's CMD says /models
    assert isinstance(storage.location(settings["TLSERVE_REPOSITORY"]), storage.Remote)
    cache = settings["TLSERVE_REPOSITORY_CACHE_DIR"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert set(volume) == {"name", "emptyDir"} and not mount.get("readOnly")
    account = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert {"eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"} <= set(
        account["metadata"]["annotations"]
    )
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    assert {"port": 443, "protocol": "TCP"} in [p for rule in egress for p in rule["ports"]]
    assert one(built["base"], "NetworkPolicy")["spec"]["egress"] == []  # the volume-backed base needs none


def test_capture_overlay_writes_one_folder_per_pod_on_a_shared_claim(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    docs = built["overlays/capture"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert list(env) == ["POD_NAME", "TLSERVE_CAPTURE_DIR"]  # NOTE: $(POD_NAME) expands only if defined first
    folder = env["TLSERVE_CAPTURE_DIR"]["value"]
    assert folder.endswith("/$(POD_NAME)")
    [mount] = [m for m in container["volumeMounts"] if folder.startswith(m["mountPath"] + "/")]
    assert not mount.get("readOnly")  # the root file system is read-only: the volume takes the writes
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    data = one(docs, "ConfigMap")["data"]
    values = {
        k.removeprefix("TLSERVE_").lower(): v for k, v in data.items() if k.startswith("TLSERVE_CAPTURE")
    }
    settings = ServerSettings(capture_dir="/captures/pod-0", **values)  # the server accepts them together
    assert settings.capture_below == 0.5 and settings.capture_novelty_above == 1.0


def test_kserve_runtime_speaks_oip_grpc(built: dict[str, list[dict[str, Any]]]) -> None:
    runtime = one(built["overlays/kserve"], "ServingRuntime")
    service = one(built["overlays/kserve"], "InferenceService")
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert service["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2"
    assert (
        runtime["spec"]["containers"][0]["ports"][0]["containerPort"]
        == ServerSettings.model_fields["grpc_port"].default
    )


def test_yamllint_is_clean() -> None:
    command = [tool("yamllint"), "-c", str(ROOT / ".yamllint.yaml"), "--strict", str(ROOT / "deploy")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tls_probe_patch_in_security_md_builds(tmp_path: Path) -> None:
    """docs/security.md's patch moves every probe to the plaintext health port."""
    text = (ROOT / "docs" / "security.md").read_text()
    patch = re.search(r"```yaml\n# kustomize patch[^\n]*\n(.*?)```", text, re.S)
    assert patch, "no kustomize patch block in docs/security.md"
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")  # NOTE: kustomize wants relative bases
    overlay = tmp_path / "deploy" / "k8s" / "overlays" / "tls-probes"
    overlay.mkdir()
    (overlay / "health-port.yaml").write_text(patch.group(1))
    (overlay / "kustomization.yaml").write_text(
        "resources: [../../base]\n"
        "patches:\n  - path: health-port.yaml\n    target: {kind: Deployment, name: tlserve}\n"
    )
    result = subprocess.run([tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    container = one([d for d in yaml.safe_load_all(result.stdout) if d], "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    assert port == 8503
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
