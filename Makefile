# bigtrain: `make demo` and `make test` each create .venv if missing and install what they need.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.bigtrain-installed
DATA    ?= data/mnist5k
PYTEST_ARGS ?=
# the torch CI and `make venv` install (and the Docker base image's); pyproject.toml has ranges
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# pytest-xdist workers for `make test`, a test file at a time, longest first (tests/conftest.py): the
# slow tier's processes often wait (SLURM limits, process start-up, servers), so two workers overlap
# that waiting even on 2 cores
WORKERS ?= 2

.PHONY: venv demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	# torch first, at the tested pins (pyproject.toml allows a range): a CUDA build that also runs on the CPU
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# the [deepspeed] extra, installed apart: its build imports torch (no build isolation), and its
	# ops are JIT-built on demand; none are needed on the CPU
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-build-isolation deepspeed
	@touch $(STAMP)

venv: $(STAMP)

$(DATA)/dataset.json: | $(STAMP)
	$(BIN)/bigtrain prepare builtin:mnist5k $(DATA) --resolution 32 --samples-per-shard 500

demo: $(STAMP) $(DATA)/dataset.json
	$(BIN)/bigtrain train experiment=mnist_dcgan data.path=$(DATA)

lint: $(STAMP)
	$(BIN)/ruff check bigtrain tests benchmarks
	$(BIN)/ruff format --check bigtrain tests benchmarks
	# the layer contract in pyproject.toml: a folder never imports one above it
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format bigtrain tests benchmarks
	$(BIN)/ruff check --fix bigtrain tests benchmarks

# everything: unit, integration (multi-process, servers, SLURM), e2e (the CLI as a user runs it)
# one OpenMP thread per process: two test workers with two threads each on 2 cores spin against each other
test: $(STAMP) lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS) tests

# the fast tier: tests not marked slow (unit tests of each module), for the edit-test loop
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(BIN)/python benchmarks/stream.py
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/gan_step.py
	$(BIN)/python benchmarks/biggan_step.py batch=50 iters=5 warmup=2
	$(BIN)/python benchmarks/tokenizer_step.py batch=32 iters=10 warmup=2
	$(BIN)/python benchmarks/prior_train.py batch=64 iters=10 warmup=2
	$(BIN)/python benchmarks/gan_step.py experiment=mnist_progan batch=16 iters=20 warmup=3
	$(BIN)/python benchmarks/prior_step.py
	$(BIN)/python benchmarks/prior_sampling.py

clean:
	rm -rf runs mlflow.db mlruns .pytest_cache
