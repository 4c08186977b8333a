# Two commands on a fresh machine: `make run` (set up, build the demo index, serve) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.madoguchi-installed
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export LITELLM_LOCAL_MODEL_COST_MAP=True
export MLFLOW_DISABLE_TELEMETRY=true
export RAGAS_DO_NOT_TRACK=true
export TOKENIZERS_PARALLELISM=false

.PHONY: setup run test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# Browser tests drive Debian's chromium (never a downloaded browser); they skip when it is absent.
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -q chromium >/dev/null 2>&1; } || echo "chromium not installed: browser tests will skip"
	touch $(STAMP)

run: setup
	$(BIN)/madoguchi index build
	$(BIN)/madoguchi serve

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not quality and not browser"

lint: setup
	$(BIN)/ruff check assistant index eval prompts tests bench

bench: setup
	$(BIN)/python -m bench.bench_search
	$(BIN)/python -m bench.bench_build

clean:
	rm -rf var .pytest_cache
