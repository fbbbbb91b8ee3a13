# Set-up, main job and tests. `make run` and `make test` work on a fresh machine with only Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads made
# torch 2x slower than one thread; passive waiting made two threads the fastest setting.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup setup-test sandbox run test bench clean

# `make run` installs what running needs; the test extras (triton, Ray, pytest: about a quarter of
# the set-up time) come with the first `make test`.
setup: $(STAMP) sandbox
setup-test: $(TEST_STAMP) sandbox

# Scaffold code runs under bubblewrap (rl_pipeline/sandbox.py); the runner refuses to run it
# without, unless told to. Debian's package; user namespaces are not needed when run as root.
sandbox:
	@command -v bwrap >/dev/null || { apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }; }

# torch is pinned and installed first (a CPU wheel); everything else is constrained to it so
# no dependency can pull a different torch with several GB of CUDA packages. Ray (`runner=ray`) is
# an extra: the tests run a real local Ray. --no-compile: pip would byte-compile all 20,000-odd
# modules of the dependencies, half the set-up time; Python compiles the few we import on first use.
PIP := $(BIN)/pip install -q --no-compile
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(PIP) -c $(VENV)/constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -c $(VENV)/constraints.txt -e ".[test,ray]"
	touch $(TEST_STAMP)

run: setup
	$(BIN)/researcher run

# The import layers first (pyproject.toml's import-linter contracts): a second, then the suite.
test: setup-test
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: setup-test
	$(BIN)/python bench/experts.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/pretrain.py

clean:
	rm -rf $(VENV)
