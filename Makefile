# Every target creates .venv and installs what it needs; running one twice is harmless.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install demo test test-all lint typecheck constraints prometheusrule protos bench bench-cache bench-export bench-server bench-transfer reliability export-matrix clean

help:
	@echo "make demo       install, then run the offline end-to-end demo"
	@echo "make test       install, then ruff + mypy + the test suite CI runs"
	@echo "make test-all   also the slow checks: all 18 bases, and the export matrix (docs/bases.md)"
	@echo "make bench      the performance report: server vs in-process, APIs, batching, backends,"
	@echo "                JPEG decoding, cold start, profile; rewrites docs/performance.md (~5 min)"
	@echo "make bench-transfer the trainer's defaults vs a small sweep vs scratch on three transfer tasks"
	@echo "make bench-cache    feature-cache speed-up benchmark"
	@echo "make bench-export   onnxruntime vs TensorFlow, int8 vs fp32 (run make demo first)"
	@echo "make export-matrix  export all 18 bases, rewrite docs/bases.md (~30 min)"
	@echo "make bench-server   gRPC server vs in-process onnxruntime (MobileNetV2 224)"
	@echo "make reliability    load, fault and bad-input suites (long versions), rewrite docs/reliability.md (~4 min)"
	@echo "make protos     regenerate tlserve/service/wire from protos/"
	@echo "make constraints    re-pin constraints.txt (the Dockerfile's versions) from .venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[train,export,serve,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/tlserve demo --workdir demo-output

lint: install
	$(BIN)/ruff check tlserve tests benchmarks protos deploy
	$(BIN)/ruff format --check tlserve tests benchmarks protos deploy

typecheck: install
	$(BIN)/mypy tlserve

test: lint typecheck
	$(BIN)/pytest -m "not slow"

test-all: lint typecheck
	$(BIN)/pytest
	$(BIN)/python benchmarks/export_matrix.py

constraints: install
	{ echo "# Pinned versions for every Dockerfile stage, from a working .venv: make constraints"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -E "^(-e|tlserve)"; \
	  echo "onnxruntime-gpu==1.31.1"; } > constraints.txt

prometheusrule: install
	$(BIN)/python deploy/prometheus/make_prometheusrule.py

protos: install
	$(BIN)/python protos/generate.py

bench: install
	$(BIN)/python benchmarks/performance.py

bench-transfer: install
	$(BIN)/python benchmarks/transfer_defaults.py

bench-cache: install
	$(BIN)/python benchmarks/feature_cache.py

bench-export: install
	$(BIN)/python benchmarks/export_speed.py

bench-server: install
	$(BIN)/python benchmarks/server_speed.py

reliability: install
	$(BIN)/python benchmarks/reliability_report.py

export-matrix: install
	$(BIN)/python benchmarks/export_matrix.py

clean:
	rm -rf $(VENV) .venv-triton demo-output bench-output .pytest_cache .mypy_cache .ruff_cache
