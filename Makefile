# Both entry points build their own virtual environment on first use. `make demo` installs
# the runtime only (requirements.txt); `make test` adds the test oracles (PyTorch,
# mxbai-rerank, sentence-transformers, ...) and libtpu (requirements-test.txt,
# requirements-tpu-aot.txt) to the same .venv. Install sizes and times: README, "Two commands".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
TESTS := $(VENV)/.installed-tests

.PHONY: demo test test-slow bench setup setup-runtime clean

$(RUNTIME): requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(RUNTIME)

$(TESTS): $(RUNTIME) requirements-test.txt requirements-tpu-aot.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q -r requirements-tpu-aot.txt  # --compile-for and its tests
	touch $(TESTS)

setup-runtime: $(RUNTIME)

setup: $(TESTS)

demo: $(RUNTIME)
	$(BIN)/prorank demo

# Two workers, one test file each at a time (module fixtures are built once): JAX compiles
# and the Python between steps leave a core idle in one process. The last full run on 2
# cores took 25.6 min beside a TPU compile (2026-11-30): see the README's Tests section.
test: $(TESTS)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# Tests marked slow (whole training runs of a second configuration); not part of CI.
test-slow: $(TESTS)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
