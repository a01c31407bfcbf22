# Every target installs what it needs first, so a fresh clone needs only `make demo`
# or `make test`. System tools (bubblewrap, busybox-static, git) come from Debian's packages.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup system-deps demo test lint typecheck check benchmark clean

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; \
	command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
	command -v git >/dev/null 2>&1 || missing="$$missing git"; \
	bb=$$(command -v busybox || true); \
	{ [ -n "$$bb" ] && ldd "$$bb" 2>&1 | grep -q 'not a dynamic'; } \
		|| missing="$$missing busybox-static"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The 'compat' editable mode puts the checkout on sys.path with a plain .pth line.
	# The default mode installs an import hook that loads pathlib, re and importlib.util
	# into every Python process of the venv (23 ms each here): the driver's stages would
	# pay it on every call, which a regular install does not, and benchmarks would lie.
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

demo: setup
	$(BIN)/runner-driver demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check runner_driver tests

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test

# Issue 5's measurements on the emulated cluster (about 12 minutes with the 5-minute job);
# prints a table and writes tests/benchmarks/results.json. Options go in BENCHMARK_ARGS,
# e.g. make benchmark BENCHMARK_ARGS="--only 1,3 --long-job-seconds 30".
benchmark: setup
	$(BIN)/python -m tests.benchmarks $(BENCHMARK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
