# tokenwise: the two commands a new machine needs are `make run` and `make test`.

CARGO ?= cargo
PYTHON ?= python3
PROMPT ?= The three most important ideas in information theory are
MODEL ?= smollm2-135m
# The release binary, wherever cargo puts its build (CARGO_TARGET_DIR or ./target).
BIN ?= $(or $(CARGO_TARGET_DIR),target)/release/tokenwise

.PHONY: run test test-protocol test-browser screenshot models models-test build lint bench clean

## Fetch the default model (if missing), build, and generate from a demo prompt with
## per-token entropy shown.
run: models build
	$(BIN) generate --model $(MODEL) --greedy --max-tokens 64 \
		--show-entropy --color always --prompt "$(PROMPT)"

## Run every test (fetches the test models first; they are cached outside the repo),
## then the server's protocol tests with the official `openai` Python client.
test: models-test
	$(CARGO) test --workspace --release
	@# cargo test has just built $(BIN) (the CLI tests run it); a
	@# separate `cargo build` would rebuild dependencies with other features.
	$(MAKE) test-protocol

test-protocol:
	test -x $(BIN) || $(CARGO) build --release -p tokenwise
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "openai>=1.40,<4" "jsonschema>=4,<5"
	$(PYTHON) tests/server/test_openai.py $(BIN)
	$(MAKE) test-browser

## The web page in headless Chromium (Debian package; Playwright's Python driver only).
test-browser:
	command -v chromium >/dev/null || (export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium))
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "playwright>=1.40,<2"
	$(PYTHON) tests/server/test_browser.py $(BIN)

## Refresh the README's screenshot of the playground.
screenshot: build
	$(PYTHON) tests/server/test_browser.py $(BIN) docs/playground.png

models:
	$(PYTHON) scripts/fetch_models.py $(MODEL)

models-test:
	$(PYTHON) scripts/fetch_models.py --all-test

build:
	$(CARGO) build --release -p tokenwise

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Speed benchmark; pass LLAMA_BENCH=/path/to/llama-bench to compare side by side.
bench: models build
	$(BIN) bench --model $(MODEL) $(if $(LLAMA_BENCH),--llama-bench $(LLAMA_BENCH))

clean:
	$(CARGO) clean
