# FinPercep: `make demo` runs the main job on the embedded photos, `make test` runs the tests.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.finpercep-installed

.PHONY: demo test test-extras lint bench clean corpus

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/finpercep demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest

# spandrel and timm need torchvision, which imports only beside the torch 2.14.1 build: a second venv
XVENV ?= .venv-extras
XSTAMP := $(XVENV)/.finpercep-installed

$(XSTAMP): pyproject.toml
	$(PYTHON) -m venv $(XVENV)
	$(XVENV)/bin/python -m pip install -q --upgrade pip
	$(XVENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 spandrel timm
	$(XVENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(XSTAMP)

test-extras: $(XSTAMP)
	$(XVENV)/bin/python -m pytest -p no:cacheprovider tests/test_rl_parts.py tests/test_rm_encoders.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache

# the photo corpus (real photographs from Debian packages; needs apt-get and the package registry):
# train/, val/, test/ under runs/photos, every checksum verified against src/finpercep/assets/photo_corpus.tsv
corpus: $(STAMP)
	$(VENV)/bin/finpercep data photos fetch --out runs/photos
