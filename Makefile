# Two commands: `make book` builds the whole book, `make test` runs every test.
# Both bootstrap .venv first (only Python 3.10+ and make are needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= $(or $(IPCBENCH_PROFILE),standard)
# mpiexec from the mpich wheel lives in .venv/bin; engines and notebooks find it on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
export IPP_NONINTERACTIVE := 1

.PHONY: setup book test lab clean chromium hosts-tools

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipcbench)" >/dev/null
	@touch $(STAMP)

# Jupyter Book's cache keys on a notebook's code only: the book's Sphinx extension (book/_ext/book_pages.py) also
# executes again every chapter whose library modules, seed files, profile or required chapters changed since it last
# ran (ipcbench.rebuild), and the pages built from every chapter's results after them; the rest comes from the cache.
book: $(STAMP) hosts-tools
	@echo "Building the book with IPCBENCH_PROFILE=$(PROFILE) (quick|standard|full)"
	IPCBENCH_PROFILE=$(PROFILE) IPCBENCH_ON_BUSY=$(or $(IPCBENCH_ON_BUSY),wait) $(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "Book: file://$(abspath _build/html/index.html)"

# Debian's chromium and CJK fonts (the quotes are Chinese) for the rendered-book test (installed when we may, else
# the test says why it skipped).
chromium:
	@if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "noto sans cjk"; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian chromium and fonts-noto-cjk for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; \
	  else echo "chromium (or fonts-noto-cjk) is not installed and cannot be installed here: the browser test will be skipped"; fi; \
	fi

# iproute2 (ip, tc) for chapter 6's emulated hosts (network namespaces; root only), installed when we may
hosts-tools:
	@if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian iproute2 for the emulated hosts"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; \
	  else echo "ip/tc are missing and cannot be installed here: chapter 6 (emulated hosts) cannot run"; fi; \
	fi

test: $(STAMP) chromium hosts-tools
	$(BIN)/python -m pytest -ra --durations=15

# JupyterLab with jupyterlab-myst (the markdown renders as in the book) and progress bars as widgets
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

clean:
	rm -rf _build data/results/* .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -exec rm -rf {} +
	@echo "Removed build outputs and results; 'rm -rf $(VENV)' removes the environment too."
