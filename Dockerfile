# syntax=docker/dockerfile:1
# One Dockerfile, four images (docker build --target NAME -t tlserve:NAME .):
#   serve      ONNX models on CPU (onnxruntime), no TensorFlow          pip extra: serve
#   serve-tf   serve + the TensorFlow SavedModel backend                 pip extras: serve,tf
#   serve-gpu  CUDA runtime + onnxruntime-gpu (CUDA, TensorRT if present) pip extra: serve-gpu
#   train      TensorFlow with GPU support, the trainer and exporters    pip extra: train-gpu
# Versions are pinned by constraints.txt (make constraints), shared by every stage.
# The model repository is a volume at /models; ports: 8500 gRPC, 8501 REST, 8502 metrics.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# Bucket support (`--repository s3://...`, `gs://...`): the pip extras s3 and gcs, about 65 MB of each
# image (botocore, google-auth, cryptography, ...). `--build-arg BUCKETS=` leaves it out (a repository on
# a volume, e.g. filled by KServe's storage initializer, needs none); `BUCKETS=s3` keeps one.
ARG BUCKETS=s3,gcs

# ---- build the wheel once (build tools stay in this stage) ----
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tlserve ./tlserve
RUN pip install --no-cache-dir "build==1.3.0" && python -m build --wheel --outdir /wheels .
# NOTE: each stage COPYs the wheel in (a layer of its size) rather than RUN --mount=type=bind,from=wheel:
# podman 4.3 (buildah 1.28) loses that mount when the wheel stage comes from its build cache.

# ---- serve: ONNX on CPU ----
FROM ${PYTHON_IMAGE} AS serve
ARG BUCKETS
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TLSERVE_REPOSITORY=/models \
    TLSERVE_PORTS_FILE=/tmp/tlserve-ports.json
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt "$(ls /tmp/wheels/tlserve-*.whl)[serve${BUCKETS:+,$BUCKETS}]" \
    && useradd --system --uid 10001 --no-create-home tlserve
USER 10001
VOLUME ["/models"]
EXPOSE 8500 8501 8502
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "tlserve.service.healthcheck"]
ENTRYPOINT ["tlserve", "serve"]
CMD ["--repository", "/models"]

# ---- serve-tf: adds the TensorFlow backend ----
FROM serve AS serve-tf
ARG BUCKETS
USER 0
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt "$(ls /tmp/wheels/tlserve-*.whl)[serve,tf${BUCKETS:+,$BUCKETS}]"
USER 10001

# ---- serve-gpu: CUDA runtime, onnxruntime-gpu ----
FROM ${CUDA_IMAGE} AS serve-gpu
ARG BUCKETS
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TLSERVE_REPOSITORY=/models \
    TLSERVE_PORTS_FILE=/tmp/tlserve-ports.json VIRTUAL_ENV=/opt/tlserve PATH=/opt/tlserve/bin:$PATH
COPY constraints.txt /tmp/constraints.txt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/tlserve
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt "$(ls /tmp/wheels/tlserve-*.whl)[serve-gpu${BUCKETS:+,$BUCKETS}]" \
    && useradd --system --uid 10001 --no-create-home tlserve
USER 10001
VOLUME ["/models"]
EXPOSE 8500 8501 8502
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "tlserve.service.healthcheck"]
ENTRYPOINT ["tlserve", "serve"]
CMD ["--repository", "/models"]

# ---- train: TensorFlow with GPU support, trainer and exporters ----
FROM ${PYTHON_IMAGE} AS train
ARG BUCKETS
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt "$(ls /tmp/wheels/tlserve-*.whl)[train-gpu${BUCKETS:+,$BUCKETS}]" \
    && useradd --system --uid 10001 --create-home tlserve
USER 10001
WORKDIR /home/tlserve
ENTRYPOINT ["tlserve"]
CMD ["--help"]
