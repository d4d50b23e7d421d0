# tessera: `make run` starts the daemon, `make test` runs the whole suite. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs in this many processes (pytest-xdist), each taking whole test files so a file's
# module-scoped daemons and clusters start once; most tests wait on daemons and workers, so two
# processes fit two cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

PROTO_SRC := $(shell find protos -name '*.proto')

.PHONY: setup run test proto lint typecheck format bench clean screenshots browser

setup: $(STAMP)

# Reinstall whenever the packaging or the pins change.
$(STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tessera needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e clients/python -e '.[dev,ray]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tesserad serve --listen 127.0.0.1:50051 --data-dir ./var

# Triton's client for the OIP conformance test, in its own venv (see constraints-triton.txt).
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

$(TRITON_STAMP): constraints-triton.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints-triton.txt 'tritonclient[grpc,http]'
	touch $(TRITON_STAMP)

# The Node.js client's test needs its packages; without npm that test skips and says why.
NODE_DEPS := clients/node/node_modules/.package-lock.json

$(NODE_DEPS): clients/node/package-lock.json
	@if command -v npm >/dev/null; then cd clients/node && npm ci --no-audit --no-fund; \
	else echo "npm not found: the Node.js client test will be skipped"; fi

# The dashboard's browser tests drive Debian's chromium: installed here when missing and apt-get
# can (as root); otherwise those tests skip and say why.
CHROMIUM := /usr/bin/chromium

browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
		|| echo "could not install chromium: the dashboard's browser tests will be skipped"; \
	else echo "chromium not found and apt-get (as root) is not available: the dashboard's browser tests will be skipped"; fi

# A worker that dies (a native crash, an OOM kill, the hang backstop in pyproject.toml) ends the
# run, its test named as crashed: a replacement worker under --dist loadfile re-runs the test that
# killed its predecessor, and can then wait forever for work xdist 3.8 never sends it
# (pytest-xdist #1323, #1378), which hung CI until its 90-minute limit.
#
# The sources are compiled to bytecode first: the suite starts many tesserad and tessera
# processes, and where PYTHONDONTWRITEBYTECODE is set (as in CI) each compiled every module it
# imported again, most of a second of CPU per start (compileall writes the files all the same).
test: $(STAMP) $(TRITON_STAMP) $(NODE_DEPS) browser
	$(PY) -m compileall -q src clients/python/src
	TESSERA_TRITONCLIENT_PYTHON=$(CURDIR)/$(TRITON_VENV)/bin/python $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0 $(PYTEST_ARGS)

# The dashboard's browser tests, writing the README's screenshots into docs/screenshots/.
screenshots: $(STAMP) browser
	TESSERA_UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/integration/dashboard/test_dashboard_pages.py

# Stubs are committed; CI regenerates them and fails on a diff.
proto: $(STAMP)
	rm -f clients/python/src/tessera/v1/*_pb2*.py* src/tesserad/oip/*_pb2*.py*
	$(PY) -m grpc_tools.protoc -I protos \
		--python_out=clients/python/src --grpc_python_out=clients/python/src \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_out=clients/python/src --mypy_grpc_out=clients/python/src \
		$(filter protos/tessera/%,$(PROTO_SRC))
	$(if $(filter protos/tesserad/%,$(PROTO_SRC)),$(PY) -m grpc_tools.protoc -I protos \
		--python_out=src --grpc_python_out=src \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_out=src --mypy_grpc_out=src \
		$(filter protos/tesserad/%,$(PROTO_SRC)))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy, strict on src/tesserad, the SDK and bench/ (configured in pyproject.toml [tool.mypy])
typecheck: $(STAMP)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	for b in bench/*_bench.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .ruff_cache .hypothesis
