# DESA Explorer: the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DESA := $(VENV)/bin/desa
TORCH_VERSION ?= 2.13.0
SURVEY ?= data/survey
RUN ?= runs/small
ARTIFACTS ?= artifacts/default
PORT ?= 5006
STARS ?=
SEED ?= 42

.PHONY: setup test demo survey model artifacts serve browser-deps evaluate clean-demo gpu-wheels

# torch is installed first, pinned to the local CPU build; the project then only declares a range (torch>=2.4),
# so pip keeps whatever torch (CPU or CUDA) is already there.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[test,validation]'
	touch $@

setup: $(VENV)/.installed

# Headless Chromium for the browser tests (Debian packages; Playwright's own browser download does not work
# offline). Installed when missing and we are root; otherwise the browser tests skip with a message.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing chromium + chromium-driver (Debian)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: setup browser-deps
	$(PY) -m pytest -q

$(SURVEY)/manifest.json: | setup
	$(DESA) simulate --seed $(SEED) --out $(SURVEY) $(if $(STARS),--stars $(STARS),)

survey: $(SURVEY)/manifest.json

$(RUN)/DONE: $(SURVEY)/manifest.json
	$(DESA) train --survey $(SURVEY) --config small --out $(RUN)

model: $(RUN)/DONE

$(ARTIFACTS)/manifest.json: $(RUN)/DONE
	$(DESA) precompute --survey $(SURVEY) --run $(RUN) --out $(ARTIFACTS)

artifacts: $(ARTIFACTS)/manifest.json

serve: setup
	$(DESA) serve --artifacts $(ARTIFACTS) --port $(PORT)

demo: artifacts
	$(MAKE) serve

# The multi-seed evaluation of the demo run (docs/evaluation.md; ~17 min on 2 cores).
evaluate: $(RUN)/DONE
	$(DESA) evaluate --run $(RUN) --out $(RUN)/metrics.json

clean-demo:
	rm -rf $(SURVEY) $(RUN) $(ARTIFACTS)

# Wheels for a GPU machine that reaches no package index and whose Python 3.12 image has torch, numba, pandas,
# pyarrow and scikit-learn but neither FAISS nor UMAP (the lent machines of this workplace): the versions of this
# venv, into .whl/ (ignored), for benchmarks/gpu_precompute_check.py (its docstring has the command there).
GPU_WHEELS ?= faiss-cpu umap-learn pynndescent
gpu-wheels: setup
	mkdir -p .whl
	for p in $(GPU_WHEELS); do \
	  v=$$($(PY) -c "import importlib.metadata as m; print(m.version('$$p'))"); \
	  $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 -d .whl "$$p==$$v" || exit 1; \
	done
	du -sh .whl
