# Every target creates .venv and installs what it needs; running one twice is harmless.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK ?= 1
# NOTE: setuptools frames a warning about every editable install in a box of asterisks; pip --quiet
# still shows it
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet

.PHONY: help install install-dev demo test test-all lint typecheck constraints prometheusrule protos bench bench-cache bench-export bench-server bench-transfer reliability export-matrix images clean

help:
	@echo "make install    what the demo needs (trainer, exporters, server) into .venv"
	@echo "make install-dev  also the test, lint and benchmark tools"
	@echo "make demo       install, then run the offline end-to-end demo"
	@echo "make test       install, then ruff + mypy + the test suite CI runs"
	@echo "make test-all   also the slow checks: all 40 bases, and the export matrix (docs/bases.md)"
	@echo "make bench      the performance report: server vs in-process, APIs, batching, backends,"
	@echo "                JPEG decoding, cold start, profile; rewrites docs/performance.md (~5 min)"
	@echo "make bench-transfer the trainer's defaults vs a small sweep vs scratch on three transfer tasks (~75 min)"
	@echo "make bench-cache    feature-cache speed-up benchmark"
	@echo "make bench-export   onnxruntime vs TensorFlow, int8 vs fp32 (run make demo first)"
	@echo "make export-matrix  export every base (each in its own process), rewrite docs/bases.md"
	@echo "make images     build the Dockerfile's four images with podman on stand-in bases and"
	@echo "                smoke-test them (train, export, serve, HEALTHCHECK, SIGTERM; ~15 min)"
	@echo "make bench-server   gRPC server vs in-process onnxruntime (MobileNetV2 224)"
	@echo "make reliability    load, fault and bad-input suites (long versions), rewrite docs/reliability.md (~4 min)"
	@echo "make protos     regenerate tlserve/service/wire from protos/"
	@echo "make constraints    re-pin constraints.txt (the Dockerfile's versions) from .venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

# install: what the demo runs (trainer, exporters, server); install-dev adds the test, lint and
# benchmark tools (pytest, ruff, mypy, hadolint, kubernetes-validate, py-spy, hypothesis, ...)
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e ".[train,export,serve]"
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[train,export,serve,dev]"
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

demo: install
	$(BIN)/tlserve demo --workdir demo-output

lint: install-dev
	$(BIN)/ruff check tlserve tests benchmarks protos deploy
	$(BIN)/ruff format --check tlserve tests benchmarks protos deploy

typecheck: install-dev
	$(BIN)/mypy tlserve

test: lint typecheck
	$(BIN)/pytest -m "not slow"

test-all: lint typecheck
	$(BIN)/pytest
	$(BIN)/python benchmarks/export_matrix.py

constraints: install-dev
	{ echo "# Pinned versions for every Dockerfile stage, from a working .venv: make constraints"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -E "^(-e|tlserve)"; \
	  echo "onnxruntime-gpu==1.31.1"; } > constraints.txt

prometheusrule: install-dev
	$(BIN)/python deploy/prometheus/make_prometheusrule.py

protos: install-dev
	$(BIN)/python protos/generate.py

bench: install-dev
	$(BIN)/python benchmarks/performance.py

bench-transfer: install-dev
	$(BIN)/python benchmarks/transfer_defaults.py --quick

bench-cache: install-dev
	$(BIN)/python benchmarks/feature_cache.py

bench-export: install-dev
	$(BIN)/python benchmarks/export_speed.py

bench-server: install-dev
	$(BIN)/python benchmarks/server_speed.py

reliability: install-dev
	$(BIN)/python benchmarks/reliability_report.py

export-matrix: install-dev
	$(BIN)/python benchmarks/export_matrix.py

images: install-dev
	$(BIN)/python deploy/images.py

clean:
	rm -rf $(VENV) .venv-triton demo-output bench-output .pytest_cache .mypy_cache .ruff_cache
