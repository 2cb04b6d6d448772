VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WEB := dashboards/web

.PHONY: up test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The dashboard's browser assets (plotly.js, map outlines) are npm packages, installed here, never committed.
$(STAMP): $(PY) pyproject.toml $(WEB)/package.json $(WEB)/package-lock.json
	$(PY) -m pip install --quiet -e '.[test]'
	npm ci --prefix $(WEB) --no-audit --no-fund --loglevel=error
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/suanwang up

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) data .pytest_cache $(WEB)/node_modules build
