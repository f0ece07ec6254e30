# Casparian Flow — the targets a newcomer guesses.
#   make demo    run the example plugins end to end and read the Parquet back
#   make test    everything a user relies on (Go with -race, Python SDK, end to end)
#   make bench   Parquet sink and Python bridge vs pyarrow, dispatch latency, side by side
#   make fuzz    the decoders' fuzz targets, briefly
#   make test-faults  the long fault suite (100 crash trials per point; ~1 h)
#   make lint    gofmt + go vet + staticcheck (pinned)
#   make build   bin/casparian (static, CGO_ENABLED=0) and the conformance reference plugins
#   make clean   remove build and demo outputs (make distclean also removes .venv)

SHELL      := /bin/bash
GO         ?= go
PYTHON3    ?= python3
VENV       := .venv
PY         := $(abspath $(VENV))/bin/python
BIN        := bin/casparian
FUZZTIME   ?= 15s
export CASPARIAN_PYTHON := $(PY)

.PHONY: all examples demo test test-go test-python test-faults bench fuzz lint fmt build clean distclean venv

all: build

venv: $(VENV)/.stamp

# A project-local venv with pyarrow & co and our SDK (editable), rebuilt when
# the pins or the SDK's pyproject change.
$(VENV)/.stamp: requirements-dev.txt sdk/python/pyproject.toml
	@echo "==> creating $(VENV) (pyarrow, pandas, polars, duckdb, pytest, casparian-flow SDK)"
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e sdk/python
	@touch $@

# bin/conformance/ holds the reference plugins `casparian conformance` finds
# next to the binary (one source, as a go-plugin executable and a WASM module).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN) ./cmd/casparian
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/conformance/refplugin ./conformance/refplugin
	GOOS=wasip1 GOARCH=wasm $(GO) build -trimpath -tags arrow_json_stdlib -buildmode=c-shared -o bin/conformance/refplugin.wasm ./conformance/refplugin

test: venv test-go test-python

# The end-to-end tests run the static binary that `make build` produces.
test-go: venv build
	$(GO) vet ./...
	CASPARIAN_BIN=$(abspath $(BIN)) $(GO) test -race -count=1 -timeout 20m ./...

# The long fault runs: every worker crash point (CASPARIAN_FAULT) tried 100
# times, the cluster failure scenarios in their long, measuring variants
# (asserting the goals: resume ≤ 2 s, hang overshoot ≤ 1 s, poison ≥ 90%),
# with the other fault and authentication scenarios (make test runs each once,
# short).
test-faults: venv build
	CASPARIAN_BIN=$(abspath $(BIN)) CASPARIAN_FAULT_TRIALS=100 $(GO) test -v -count=1 -timeout 3h \
		-run 'TestWorkerCrashPoints|TestCluster|TestPoisonJobRetries|TestWorkerDrain|TestDiskFullDuringWrite|TestHistoryCheckerCatches|TestAuthenticatedCluster' ./cmd/casparian/

test-python: venv
	cd sdk/python && $(PY) -m pytest -q

# The Go example plugin, one source built as a go-plugin executable and as a
# WASM module (never committed: built here, and by the tests at test time).
examples:
	@mkdir -p bin/examples
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/examples/jsonl ./examples/go-jsonl
	GOOS=wasip1 GOARCH=wasm $(GO) build -trimpath -tags arrow_json_stdlib -buildmode=c-shared -o bin/examples/jsonl.wasm ./examples/go-jsonl

demo: build venv examples
	./examples/demo.sh

bench: build venv
	$(PY) bench/sink_bench.py
	$(PY) bench/bridge_bench.py
	$(GO) run ./bench/dispatchbench
	$(GO) run ./bench/guestbench -python $(PY)

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzFrames$$' -fuzztime $(FUZZTIME) ./bridge
	$(GO) test -run '^$$' -fuzz '^FuzzReadIPC$$' -fuzztime $(FUZZTIME) ./bridge
	$(GO) test -run '^$$' -fuzz '^FuzzABIEmit$$' -fuzztime $(FUZZTIME) ./guests/wasm
	$(GO) test -run '^$$' -fuzz '^FuzzABILog$$' -fuzztime $(FUZZTIME) ./guests/wasm
	$(GO) test -run '^$$' -fuzz '^FuzzABIDocuments$$' -fuzztime $(FUZZTIME) ./guests/wasm
	$(GO) test -run '^$$' -fuzz '^FuzzLines$$' -fuzztime $(FUZZTIME) ./internal/guestlog
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./sentinel/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshal$$' -fuzztime $(FUZZTIME) ./sentinel/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzHandshake$$' -fuzztime $(FUZZTIME) ./sentinel/transport
	$(GO) test -run '^$$' -fuzz '^FuzzFrameParser$$' -fuzztime $(FUZZTIME) ./sentinel/transport

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin demo-out output .pytest_cache sdk/python/.pytest_cache

distclean: clean
	rm -rf $(VENV)
