# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing (Python 3.10-3.13 as `python3`, or set PYTHON=…).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ART ?= artifacts
DATA := $(ART)/data/phantom
RUNS := $(ART)/runs
REPO := $(ART)/model_repository
SEED ?= 0
PATIENTS ?= 120
export BRAINSCAN_ARTIFACTS := $(ART)

FP16 := $(RUNS)/classifier/model.fp16.onnx $(RUNS)/segmenter/model.fp16.onnx
# the bindings' type stubs, for mypy only: outside site-packages, so `import tensorrt` still
# fails here as it does on any machine without TensorRT
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
# the Kubernetes policy scanner tests/test_kubernetes.py runs, pinned, in an environment of its
# own: its dependencies (boto3, packaging, …) clash with the kit's
CHECKOV := checkov==3.3.30

.PHONY: demo test soak venv data train export fp16 repository serve gpu predict viewer-shot ui-shot bench cli-docs docker-locks clean

venv: $(VENV)/.installed

# .venv takes about 3.6 GB and a test run about 0.8 GB more: on a fuller disk the install stops here,
# saying so, instead of in the middle of pip (MIN_FREE_GB=0 skips the check)
MIN_FREE_GB ?= 4.5
$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
		sys.exit(None if free >= $(MIN_FREE_GB) else f"error: {free:.1f} GB free on this disk; .venv and a test run need about $(MIN_FREE_GB) GB (make MIN_FREE_GB=0 tries anyway)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,export,serve,ui,s3,pacs,bench,dev]"
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/tensorrt-stubs $(TRT_STUBS)
	test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet $(CHECKOV)
	touch $@

# --- the demo: phantom data -> train -> ONNX (FP32, FP16) -> Triton (local flavour) -> gRPC predictions
demo: venv repository fp16
	@$(MAKE) --no-print-directory predict

data: $(DATA)/.done
$(DATA)/.done: | venv
	$(BIN)/brainscan data phantom --out $(DATA) --patients $(PATIENTS) --seed $(SEED)
	touch $@

train: $(RUNS)/classifier/model.keras $(RUNS)/segmenter/model.keras
$(RUNS)/classifier/model.keras: $(DATA)/.done
	$(BIN)/brainscan train classifier --data $(DATA) --out $(RUNS)/classifier --seed $(SEED)
$(RUNS)/segmenter/model.keras: $(DATA)/.done
	$(BIN)/brainscan train segmenter --data $(DATA) --out $(RUNS)/segmenter --seed $(SEED)

export: $(RUNS)/classifier/model.onnx $(RUNS)/segmenter/model.onnx
$(RUNS)/%/model.onnx: $(RUNS)/%/model.keras
	$(BIN)/brainscan export onnx $(RUNS)/$*

# FP16 graphs (FP32 inputs/outputs) for the GPU flavours, gated on CPU against the FP32 ONNX
fp16: $(FP16)
$(RUNS)/%/model.fp16.onnx: $(RUNS)/%/model.onnx
	$(BIN)/brainscan export fp16 $(RUNS)/$*

repository: $(REPO)/.done
$(REPO)/.done: $(RUNS)/classifier/model.onnx $(RUNS)/segmenter/model.onnx
	$(BIN)/brainscan export repository --flavour local --repository $(REPO) \
		--classifier $(RUNS)/classifier/model.onnx --segmenter $(RUNS)/segmenter/model.onnx
	touch $@

serve: repository
	$(BIN)/brainscan serve --repository $(REPO)

# The production path on an NVIDIA GPU host (Docker, Compose v2, NVIDIA Container Toolkit):
# both images of the pinned NGC release (refused unless both hold the same TensorRT x.y.z),
# strongly typed engines from the FP16 graphs, then the server (doctor first), waiting until
# it is healthy. docs/gpu.md explains each step.
COMPOSE := docker compose -f docker/compose.yaml
gpu: fp16
	$(COMPOSE) --profile tools build
	COMPOSE="$(COMPOSE)" sh docker/same-tensorrt.sh
	$(COMPOSE) run --rm --user "$$(id -u):$$(id -g)" export
	$(COMPOSE) up -d --wait triton

# Runs $(1) while a server on the demo repository is up; stops the server afterwards.
define with_server
	@set -e; \
	$(BIN)/brainscan serve --repository $(REPO) --log-file $(ART)/tritonserver.log & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null || true' EXIT; \
	for i in $$(seq 360); do \
		$(BIN)/brainscan health >/dev/null 2>&1 && break; \
		kill -0 $$server 2>/dev/null || exit 1; \
		sleep 0.5; \
	done; \
	$(BIN)/brainscan health; \
	$(1)
endef

# Sends the held-out test patients through the ensemble, then the first of them as an MR
# DICOM series: its DICOM SEG and SR (and audit line) land in $(ART)/predictions-dicom; then
# the intended-use gate's figures (brainscan evaluate -> $(ART)/evaluation/report.md).
PATIENT_DICOM = $(BIN)/brainscan data dicom $$($(BIN)/brainscan data split --data $(DATA) --part test --seed $(SEED) | head -1) --out $(ART)/dicom/series
predict: repository
	@rm -rf $(ART)/dicom $(ART)/predictions-dicom
	$(call with_server,$(BIN)/brainscan predict $$($(BIN)/brainscan data split --data $(DATA) --part test --seed $(SEED)) --evaluate --out $(ART)/predictions \
		&& $(PATIENT_DICOM) && $(BIN)/brainscan predict $(ART)/dicom/series --out $(ART)/predictions-dicom \
		&& echo "DICOM SEG and SR of the series:" && ls $(ART)/predictions-dicom/*.seg.dcm $(ART)/predictions-dicom/*.sr.dcm \
		&& $(BIN)/brainscan evaluate --data $(DATA) --seed $(SEED))

# docs/img/seg-in-dwv.png: the demo's SEG over its MR series in the dwv viewer (needs npm, chromium)
viewer-shot: predict
	docs/viewer/screenshot.sh $(ART)/dicom/series $$(ls $(ART)/predictions-dicom/*.seg.dcm) docs/img/seg-in-dwv.png $(ART)/viewer

# docs/img/ui-refusal.png: the web page refusing a real MR slice the demo networks were not made
# for (the sagittal head matplotlib ships); needs chromium
ui-shot: repository
	$(call with_server,$(BIN)/python docs/ui/screenshot.py docs/img/ui-refusal.png)

# perf_analyzer sweeps + in-process baselines -> benchmarks/results/<date>-<host>/report.md
bench: repository
	$(call with_server,$(BIN)/brainscan bench run $(DATA) --repository $(REPO))

# perf_analyzer is fetched here (PyPI, checked against its SHA-256), not by the tests
test: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/brainscan bench setup || echo "perf_analyzer could not be set up: the benchmark tests will skip"
	$(BIN)/python -m pytest

# Load, long-run and fault runs on the demo's networks (about 6 minutes on 2 cores; each with a pass
# criterion) -> benchmarks/results/<date>-soak/soak.md
soak: venv repository
	BRAINSCAN_SOAK_REPOSITORY=$(abspath $(REPO)) BRAINSCAN_SOAK_DATA=$(abspath $(DATA)) \
		$(BIN)/python -m pytest -m soak tests/test_soak.py -p no:cacheprovider -v

# docs/cli.md from the Typer app (tests/test_docs.py fails when it is stale)
cli-docs: venv
	$(BIN)/python -m brainscan.clidoc docs/cli.md

# Hash-pinned dependencies of the two images (docker/*.lock), from pyproject.toml and the
# release's pins (docker/release.in), with pip-tools in a throw-away environment of the
# images' Python (NGC_PYTHON in docker/.env). Run after changing dependencies or the release.
LOCK_PYTHON ?= python$(shell sed -n 's/^NGC_PYTHON=//p' docker/.env)
LOCK := pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
docker-locks:
	rm -rf $(ART)/pip-tools && $(LOCK_PYTHON) -m venv $(ART)/pip-tools && $(ART)/pip-tools/bin/pip install --quiet pip-tools
	cd docker && ../$(ART)/pip-tools/bin/$(LOCK) --extra s3 --extra pacs --output-file triton.lock ../pyproject.toml release.in
	cd docker && ../$(ART)/pip-tools/bin/$(LOCK) --extra export --extra s3 --output-file export.lock ../pyproject.toml release.in export-tools.in

clean:
	rm -rf $(ART)
