# cloudimg — the two commands are `make run` and `make test`; `make bench` measures.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BUF := build/tools/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto')
# The Google protos ours import, vendored (see third_party/googleapis/README.md).
THIRD_PARTY := third_party/googleapis
GOOGLE_PROTOS := $(shell find $(THIRD_PARTY) -name '*.proto')

.PHONY: all venv gen tools lint lock breaking node-client test unit integration e2e fault fault-report run bench revision clean

all: gen

# The venv: exactly the lock's versions, hash-checked (requirements/dev.txt: the runtime's and the dev group's),
# then cloudimg itself, editable (its setup.py generates gen/, as the gen rule does).
$(VENV)/.installed: requirements/dev.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

# Generated code goes into gen/ (one package tree: cloudimg.<context>.v1, with typed stubs and py.typed), by
# clients/python/protogen.py, the generator the distributions' builds use too; the editable install maps the
# package to it. Never edited by hand; this rule rewrites it whole. Python is generated for our protos only:
# google.type/rpc/api come from googleapis-common-protos at runtime. The protoset carries
# google/rpc/status.proto and error_details.proto as well, so grpcurl can decode the error details.
gen/.stamp: $(VENV)/.installed $(PROTOS) $(GOOGLE_PROTOS) clients/python/protogen.py
	mkdir -p build
	$(PY) clients/python/protogen.py gen protos $(THIRD_PARTY)
	$(PY) -m grpc_tools.protoc -I protos -I $(THIRD_PARTY) --include_imports \
	  --descriptor_set_out=build/cloudimg.protoset $(PROTOS) google/rpc/status.proto google/rpc/error_details.proto
	touch $@

gen: gen/.stamp

$(BUF):
	mkdir -p build/tools
	cd build/tools && npm install --silent --no-audit --no-fund @bufbuild/buf@1.75.0

lint: gen/.stamp $(BUF)
	$(BUF) lint
	$(BUF) format --diff --exit-code protos
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/mypy

# buf breaking of protos/ against the previous release (the latest v0.* tag, else the merge base with main).
breaking: $(BUF)
	@devtools/breaking.sh $(BUF) $(THIRD_PARTY)

# The Node.js client (clients/node, run by tests/e2e/test_node_client.py): its modules as pinned in its
# package-lock.json (npm ci writes node_modules/.package-lock.json last).
NODE_CLIENT := clients/node
$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --silent --no-audit --no-fund

node-client: $(NODE_CLIENT)/node_modules/.package-lock.json

# qemu-img (Debian qemu-utils) builds the disk images that the import tests inspect.
tools:
	command -v qemu-img >/dev/null || apt-get install -y qemu-utils || (apt-get update && apt-get install -y qemu-utils) \
	  || (sudo apt-get update && sudo apt-get install -y qemu-utils)

test: gen lint breaking tools node-client
	$(PY) -m pytest -q -p no:cacheprovider tests

unit: gen tools
	$(PY) -m pytest -q tests/unit
integration: gen tools
	$(PY) -m pytest -q tests/integration
e2e: gen tools node-client
	$(PY) -m pytest -q tests/e2e
fault: gen tools
	$(PY) -m pytest -q tests/fault

# The fault suite's figures (build/fault-report.json, left by every run of it) into README's reliability table.
fault-report: fault
	$(PY) -m devtools.fault_report

run: gen
	$(PY) -m devtools.run

bench: gen
	$(PY) -m devtools.bench

# A new schema revision for one service: make revision SERVICE=billing MESSAGE="what changes"
# The lock: requirements/runtime.txt (what the container installs) and requirements/dev.txt (what make installs)
# from pyproject.toml's dependencies and dev group, with hashes. Keeps every pin it can; UPGRADE=1 moves them all.
lock: $(VENV)/.installed
	@devtools/lock.sh $(VENV)/bin/uv $(if $(UPGRADE),--upgrade)

revision: gen
	$(PY) -m devtools.revision "$(SERVICE)" "$(MESSAGE)"

clean:
	rm -rf $(VENV) gen build data $(NODE_CLIENT)/node_modules
