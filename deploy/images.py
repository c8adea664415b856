"""Build the Dockerfile's images with podman and smoke-test each one (``make images``).

Docker Hub cannot be reached from the machines this project is built on, so the bases are made
here: a stand-in for ``python:3.11-slim-bookworm`` from Debian's packages (mmdebstrap minbase with
python3, python3-venv and ca-certificates, imported into podman, a venv at /opt/python first on
PATH, so that ``python`` and ``pip`` behave as in the official image), and, for ``serve-gpu``, the
bare Debian as a stand-in for the CUDA image: it proves the stage builds (apt, venv, onnxruntime-gpu
from PyPI), not that CUDA works. Both are made once and cached (``podman image exists``); the
production bases stay the official ones (the Dockerfile's defaults).

Smoke tests, each on the image as a user runs it (non-root, ``--network host`` here):

- ``train``: ``tlserve train`` on a tiny folder mounted read-only, ``tlserve export`` into a mounted
  repository (SavedModel + ONNX, checked against Keras by the exporter);
- ``serve`` (ONNX) and ``serve-tf`` (``--backend tensorflow``, the SavedModel) on that repository
  mounted read-only at /models, on a gRPC port no default names: the image's own HEALTHCHECK
  (``podman healthcheck run``), a TF Serving Predict (tensorflow-serving-api's stubs) and an Open
  Inference Protocol ModelInfer from the host, each of a red image the model has not seen (it must
  answer red), then SIGTERM (``podman stop``): exit 0 within the server's grace period;
- ``serve-nobuckets``: ``serve`` built with ``--build-arg BUCKETS=`` (no s3/gcs extras), smoke-tested as
  ``serve``, and a ``--repository s3://...`` must fail with a one-line hint to the missing extra;
- ``serve-gpu``: built only (there is no GPU here).

What this sandbox needs of podman (and a normal host does not): ``--runtime runc
--cgroup-manager=cgroupfs``, ``--ulimit nofile=1024:1024 --ulimit nproc=1024:1024``, ``--network
host``, and the host's CA bundle mounted for pip (TLSERVE_IMAGES_CA, default the Debian bundle).

    python deploy/images.py [--stages train,serve,serve-nobuckets,serve-tf,serve-gpu] [--work DIR] [--keep]

Prints one line per step and a table of image sizes; writes DIR/report.json. Exit 0 when every
stage built and passed, 1 when one failed, 2 when podman or mmdebstrap is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
CA = os.environ.get("TLSERVE_IMAGES_CA", "/etc/ssl/certs/ca-certificates.crt")
DEBIAN = "localhost/tlserve-standin/debian:bookworm"
PYTHON = "localhost/tlserve-standin/python:3.11-slim-bookworm"
# NOTE: train first: it writes the repository the serving images are smoke-tested on
STAGES = ("train", "serve", "serve-nobuckets", "serve-tf", "serve-gpu")
VARIANTS = {"serve-nobuckets": ("serve", ["--build-arg", "BUCKETS="])}
"""Images built from a stage with build arguments: name -> (target, arguments)."""
TAG = "localhost/tlserve:{}"
GRPC_PORT_NOT_DEFAULT = 9000
UID = "10001"
LABEL = "tlserve-images-smoke"
"""Every container this script starts carries it; leftovers of a killed run are removed at start."""
TRAIN_ARGS = ["--base", "mobilenet_v2", "--weights", "none", "--mode", "scratch", "--image-size", "32",
              "--epochs", "12", "--augment", "none", "--bn-momentum", "0.5"]  # fmt: skip


class Failed(Exception):
    """A step failed: the message says which and why, in one line."""


def step(what: str) -> float:
    print(f"-- {what}", flush=True)
    return time.perf_counter()


def run(command: Sequence[str], what: str, timeout_s: float = 3600, quiet: bool = False) -> str:
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise Failed(f"{what} failed (exit {done.returncode}):\n{tail}")
    if not quiet and done.stdout.strip():
        print(done.stdout.strip()[-2000:], flush=True)
    return done.stdout


def podman(*args: str, what: str, timeout_s: float = 3600, quiet: bool = True) -> str:
    return run([*PODMAN, *args], what, timeout_s, quiet)


def exists(image: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", image], check=False, timeout=60).returncode == 0


def standin_bases(work: Path) -> None:
    """Debian bookworm and the Python stand-in, made once (cached in podman's store)."""
    if not exists(DEBIAN):
        started = step(f"making {DEBIAN} with mmdebstrap (once)")
        tar = work / "debian-bookworm-minbase.tar"
        run(["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
             "bookworm", str(tar)], "mmdebstrap", quiet=True)  # fmt: skip
        podman("import", "--change", f"ENV PIP_CERT={CA}", "--change", 'CMD ["bash"]', str(tar), DEBIAN,
               what="podman import")  # fmt: skip
        tar.unlink()
        print(f"   {time.perf_counter() - started:.0f} s", flush=True)
    if not exists(PYTHON):
        step(f"making {PYTHON} (a venv at /opt/python first on PATH, as the official image's python)")
        context = work / "standin"
        context.mkdir(parents=True, exist_ok=True)
        (context / "Containerfile").write_text(
            f"FROM {DEBIAN}\n"
            "RUN python3 -m venv /opt/python && /opt/python/bin/python -m pip --version\n"
            "ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            'CMD ["python3"]\n'
        )
        podman("build", *LIMITS, "--network", "host", "-t", PYTHON, str(context), what="stand-in python")


def build(stage: str) -> float:
    target, extra = VARIANTS.get(stage, (stage, []))
    started = step(f"building {TAG.format(stage)} (--target {target} {' '.join(extra)})".rstrip())
    # NOTE: --format docker: the OCI image format has no HEALTHCHECK (podman drops it with a warning)
    podman("build", "--format", "docker", *LIMITS, "--network", "host", "-v", f"{CA}:{CA}:ro",
           "--build-arg", f"PYTHON_IMAGE={PYTHON}", "--build-arg", f"CUDA_IMAGE={DEBIAN}", *extra,
           "--target", target, "-t", TAG.format(stage), str(ROOT),
           what=f"podman build --target {target}")  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"   built in {seconds:.0f} s, {size_mb(stage):.0f} MB", flush=True)
    return seconds


def size_mb(stage: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", TAG.format(stage), what="inspect")) / 1e6


def write_folder(root: Path, per_class: int = 16) -> Path:
    """Red, green and blue noisy squares: a task a network learns in a few epochs (from scratch,
    with BatchNorm statistics that follow the data: --bn-momentum 0.5)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, color in {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 60, 210)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(color) + rng.normal(0, 12, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def smoke_train(work: Path) -> Path:
    """``tlserve train`` and ``tlserve export`` in the train image; returns the repository."""
    shutil.rmtree(work, ignore_errors=True)  # NOTE: a --work folder used before
    data = write_folder(work / "data")
    out = work / "out"
    out.mkdir()
    out.chmod(0o777)  # NOTE: the container runs as uid 10001
    image = TAG.format("train")
    mounts = ["-v", f"{data}:/data:ro", "-v", f"{out}:/out", "--label", LABEL]
    step("train: tlserve train on a mounted folder (MobileNetV2 from scratch, 32 px)")
    podman("run", "--rm", *LIMITS, "--network", "host", *mounts, image, "train", "/data", "--out", "/out/run",
           *TRAIN_ARGS, what="tlserve train in the train image", quiet=False)  # fmt: skip
    step("train: tlserve export into a mounted repository")
    podman("run", "--rm", *LIMITS, "--network", "host", *mounts, image, "export", "/out/run",
           "--repository", "/out/models", "--name", "colors",
           what="tlserve export in the train image", quiet=False)  # fmt: skip
    repository = out / "models"
    if not (repository / "colors" / "1" / "model.onnx").is_file():
        raise Failed(f"the train image's export wrote no {repository}/colors/1/model.onnx")
    return repository


def export_on_host(work: Path) -> Path:
    """The repository the serving images are tested on when the train image is not built."""
    shutil.rmtree(work, ignore_errors=True)
    data = write_folder(work / "data")
    tlserve = str(Path(sys.executable).with_name("tlserve"))
    step("host: tlserve train + export (the train image was not built)")
    run([tlserve, "train", str(data), "--out", str(work / "run"), *TRAIN_ARGS], "tlserve train")
    repository = work / "models"
    run([tlserve, "export", str(work / "run"), "--repository", str(repository), "--name", "colors"],
        "tlserve export")  # fmt: skip
    return repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smoke_serve(stage: str, repository: Path) -> dict[str, object]:
    """Run the image on ``repository`` (read-only), probe it as its HEALTHCHECK and clients do, stop it."""
    name = f"tlserve-smoke-{stage}-{os.getpid()}"
    grpc_port, http_port, metrics_port = GRPC_PORT_NOT_DEFAULT, free_port(), free_port()
    args = ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    if stage == "serve-tf":
        args += ["--backend", "tensorflow"]
    step(f"{stage}: run on /models (read-only), gRPC on {grpc_port}")
    try:
        podman("run", "-d", "--name", name, "--label", LABEL, *LIMITS, "--network", "host",
               "-v", f"{repository}:/models:ro", TAG.format(stage), "--repository", "/models", *args,
               what=f"podman run {stage}")  # fmt: skip
        user = podman("exec", name, "id", "-u", what="id -u").strip()
        if user != UID:
            raise Failed(f"{stage} runs as uid {user}, not {UID}")
        healthy_after = wait_healthy(name, stage)
        labels = (repository / "colors" / "1" / "labels.txt").read_text().split()
        version, top = predict_tfs(grpc_port)
        infer, infer_top = model_infer_oip(grpc_port)
        if labels[top] != "red" or labels[infer_top] != "red":
            raise Failed(
                f"{stage}: a red image was classified {labels[top]} (Predict), "
                f"{labels[infer_top]} (ModelInfer)"
            )
        step(f"{stage}: SIGTERM")
        started = time.perf_counter()
        podman("stop", "--time", "30", name, what="podman stop")
        stop_s = time.perf_counter() - started
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name, what="inspect").strip())
        grace_s = 10.0  # NOTE: the server's default shutdown_grace_s
        if code != 0 or stop_s > grace_s + 5:
            logs = podman("logs", "--tail", "8", name, what="logs")
            raise Failed(
                f"{stage}: exit {code} {stop_s:.1f} s after SIGTERM (grace {grace_s:.0f} s):\n{logs}"
            )
        print(f"   healthy after {healthy_after:.1f} s; Predict: version {version}, {labels[top]}; "
              f"ModelInfer: {infer}, {labels[infer_top]}; SIGTERM: exit 0 in {stop_s:.1f} s",
              flush=True)  # fmt: skip
        return {"healthy_after_s": healthy_after, "stop_s": stop_s, "uid": user}
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, check=False)


def refuses_buckets(stage: str) -> str:
    """An image built without bucket support says which extra a bucket repository needs, in one line."""
    step(f"{stage}: --repository s3://... without the s3 extra")
    done = subprocess.run([*PODMAN, "run", "--rm", "--label", LABEL, *LIMITS, "--network", "none",
                           TAG.format(stage), "--repository", "s3://tlserve-no-such-bucket/models"],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    if done.returncode == 0 or not said or "tlserve[s3]" not in said[-1]:
        raise Failed(f"{stage}: a bucket repository gave exit {done.returncode}: {said[-3:]}")
    print(f"   exit {done.returncode}: {said[-1]}", flush=True)
    return said[-1]


def wait_healthy(name: str, stage: str, timeout_s: float = 120) -> float:
    """The image's own HEALTHCHECK command, until it passes: on --grpc-port, not the default 8500."""
    started = time.perf_counter()
    while True:
        check = subprocess.run(
            [*PODMAN, "healthcheck", "run", name], capture_output=True, text=True, check=False, timeout=60
        )
        if check.returncode == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            logs = subprocess.run(
                [*PODMAN, "logs", "--tail", "10", name], capture_output=True, text=True
            ).stderr
            raise Failed(
                f"{stage}: HEALTHCHECK not passing after {timeout_s:.0f} s ({check.stdout.strip()}):\n{logs}"
            )
        time.sleep(1)


def red_image() -> bytes:
    """A red square the model has not seen, PNG-encoded as a client would send it."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(5)
    pixels = np.clip(np.array([200, 40, 40]) + rng.normal(0, 12, (36, 36, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def predict_tfs(port: int) -> tuple[int, int]:
    """TF Serving's Predict (signature predict_images: encoded images) with TF Serving's own stubs."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "colors"
    request.model_spec.signature_name = "predict_images"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([red_image()]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    if probabilities.shape != (1, 3) or not np.allclose(probabilities.sum(1), 1, atol=1e-4):
        raise Failed(f"Predict answered probabilities of shape {probabilities.shape}: {probabilities}")
    return int(response.model_spec.version.value), int(probabilities[0].argmax())


def model_infer_oip(port: int) -> tuple[str, int]:
    """The Open Inference Protocol's ModelInfer (KServe v2 gRPC), the image as BYTES."""
    import grpc
    import numpy as np

    from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2 as pb
    from tlserve.service.wire.kserve.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="colors")
    tensor = request.inputs.add(name="images", datatype="BYTES", shape=[1])  # type: ignore[attr-defined]
    tensor.contents.bytes_contents.append(red_image())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    answer = response.outputs[0]
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], np.float32)
    else:  # NOTE: typed contents in, typed contents out
        values = np.asarray(answer.contents.fp32_contents, np.float32)
    out = values.reshape(list(answer.shape))
    if out.shape != (1, 3):
        raise Failed(f"ModelInfer answered shape {out.shape}")
    return f"{answer.name} {list(out.shape)}", int(out[0].argmax())


def remove_leftovers() -> None:
    """Containers of an earlier run that was killed before its clean-up (they would hold port 9000)."""
    listed = subprocess.run([*PODMAN, "ps", "-a", "-q", "--filter", f"label={LABEL}"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    ids = listed.stdout.split()
    if ids:
        subprocess.run([*PODMAN, "rm", "-f", *ids], capture_output=True, timeout=120, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of " + ", ".join(STAGES))
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    stages = [s for s in STAGES if s in args.stages.split(",")]
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        print(f"images: {' and '.join(missing)} not installed (apt-get install podman mmdebstrap runc "
              "uidmap fuse-overlayfs slirp4netns)", file=sys.stderr)  # fmt: skip
        return 2
    remove_leftovers()
    work = args.work or Path(tempfile.mkdtemp(prefix="tlserve-images-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict[str, object]] = {}
    try:
        standin_bases(work)
        for stage in stages:
            report[stage] = {"build_s": build(stage), "size_mb": size_mb(stage)}
        repository = None
        if "train" in stages:
            repository = smoke_train(work / "train")
            report["train"]["smoke"] = "train + export"
        for stage in ("serve", "serve-nobuckets", "serve-tf"):
            if stage in stages:
                repository = repository or export_on_host(work / "host")
                report[stage]["smoke"] = smoke_serve(stage, repository)
        if "serve-nobuckets" in stages:
            report["serve-nobuckets"]["bucket_refusal"] = refuses_buckets("serve-nobuckets")
    except (Failed, subprocess.TimeoutExpired) as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # NOTE: e.g. a gRPC error of a smoke test's client: one line, exit 1
        print(f"images: {type(exc).__name__}: {str(exc)[:2000]}", file=sys.stderr)
        return 1
    finally:
        remove_leftovers()
        (work / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        if args.keep or args.work:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| image | size (MB) | built in (s) |\n|---|---:|---:|")
    for stage, row in report.items():
        print(f"| {TAG.format(stage)} | {row['size_mb']:.0f} | {row['build_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
