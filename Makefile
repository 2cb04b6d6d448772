VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WEB := dashboards/web

.PHONY: up test lint check docs clean browser

# The browser tests drive Debian's Chromium (never a downloaded one); a CJK font lets it draw Chinese labels.
BROWSER_PACKAGES := chromium fonts-wqy-zenhei

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The dashboard's browser assets (plotly.js, map outlines) are npm packages, installed here, never committed.
$(STAMP): $(PY) pyproject.toml $(WEB)/package.json $(WEB)/package-lock.json
	$(PY) -m pip install --quiet -e '.[embedded,bench,test]'
	npm ci --prefix $(WEB) --no-audit --no-fund --loglevel=error
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/suanwang up

# Installed when missing and this is root with apt-get; otherwise one line says what to install.
browser:
	@if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi wenquanyi; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y --no-install-recommends $(BROWSER_PACKAGES) >/dev/null \
	  || { apt-get update -q && apt-get install -y --no-install-recommends $(BROWSER_PACKAGES); }; \
	else \
	  echo "make test: the browser tests need Debian's Chromium and a CJK font: sudo apt-get install $(BROWSER_PACKAGES)" >&2; \
	  exit 1; \
	fi

# The tests mostly wait on the broker and subprocesses, so three workers (each with its own broker and
# store) finish in about half the time of one on two cores; those that run the whole platform go one after
# another in one worker (their xdist group, tests/conftest.py).
TEST_WORKERS ?= 3

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The inner loop: lint, format, imports declared, the generated docs current, and every test that needs no
# broker and no long experiment (under a minute); `make test` stays the whole suite.
check: lint
	$(VENV)/bin/deptry .
	$(PY) -m suanwang.settings_doc | diff -u docs/settings.md - || { echo "docs/settings.md is stale: make docs" >&2; exit 1; }
	$(PY) -m pytest -q -n 2 -m "not slow"

docs: $(STAMP)
	$(PY) -m suanwang.settings_doc > docs/settings.md

clean:
	rm -rf $(VENV) data .pytest_cache $(WEB)/node_modules build
