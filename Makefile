# Cabinet: `make run` serves a demo clinic locally; `make test` runs the whole suite;
# `make check` runs what CI checks (`.ci/run` starts PostgreSQL and Redis, then `make check`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k search -x"`.
PYTEST_ARGS ?=
# The port of `make run`, e.g. `make run PORT=8001`.
PORT ?= 8000

# Commands that need settings but not the keys of `make run` get a throwaway set.
THROWAWAY_KEYS = $(PY) -m practice.keygen > $(VENV)/throwaway.env && set -a && . $(VENV)/throwaway.env && set +a

.PHONY: run test test-fast install env migrate seed check lint types migrations-check deploy-check messages clean

# requirements-dev.txt includes requirements-demo.txt (Faker, for seed_demo), which includes
# requirements.txt (the runtime, all that production installs).
$(STAMP): requirements.txt requirements-demo.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

# Fresh keys in an untracked .env (mode 600), only if none exists.
.env: | $(STAMP)
	$(PY) -m practice.keygen --write .env --debug

env: .env

migrate: install .env
	$(PY) manage.py migrate --noinput

# Idempotent: creates what is missing (accounts, practitioners, patients up to 200).
seed: migrate
	$(PY) manage.py seed_demo

run: seed
	@echo "Cabinet on http://127.0.0.1:$(PORT)/ (log in as secretary, doctor, doctor2, doctor3 or admin;"
	@echo "  the second factor: .venv/bin/python manage.py demo_code <user>, or scan the URI seed_demo printed)"
	$(PY) manage.py runserver 127.0.0.1:$(PORT)

# The suite needs keys too: tests use a throwaway set, never the .env of `make run`.
# DATABASE_URL and CELERY_BROKER_URL come from the environment (default: SQLite, eager).
test: install
	$(THROWAWAY_KEYS) && DEBUG=0 $(PY) -m pytest $(PYTEST_ARGS)

# The suite without the tests marked slow (replays of abuse and of a busy day, browsers, real
# workers): a few minutes, for the edit-test loop. CI runs `make test`.
test-fast: install
	$(THROWAWAY_KEYS) && DEBUG=0 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Before pushing, and in CI: each part also runs alone. `make -k check` carries on past a
# failure (and still fails at the end). The tests come last: pytest's summary ends the output.
check: lint migrations-check deploy-check test

# ruff (style, pytest rules, complexity, no function-level imports), the layers
# (config -> investigations -> scheduling -> patients -> practice -> audit, docs/design.md), types.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(THROWAWAY_KEYS) && $(VENV)/bin/mypy

# Every model change has its migration. Models are the same on every database: an in-memory
# SQLite one keeps the system checks (the key canary) from needing a server.
migrations-check: install
	$(THROWAWAY_KEYS) && DATABASE_URL=sqlite://:memory: $(PY) manage.py makemigrations --check --dry-run

# Production settings (DEBUG unset, fresh keys) on a throwaway database, PostgreSQL when
# DATABASE_URL names one: `check --deploy` with zero warnings, and a wrong
# FIELD_ENCRYPTION_KEY refused at start by the key canary (config/deploy_check.py).
deploy-check: install
	$(PY) -m config.deploy_check

# Static types (pyproject.toml, [tool.mypy]); the django-stubs plugin loads the settings, which
# need keys: a throwaway set, as for the tests.
types: install
	$(THROWAWAY_KEYS) && $(VENV)/bin/mypy

# Extract UI strings into locale/fr/LC_MESSAGES/django.po and compile the .mo.
# Commit both: the app reads the .mo at run time and never compiles anything.
messages: install
	$(THROWAWAY_KEYS) && $(PY) manage.py makemessages -l fr --ignore=.venv --ignore=bench --ignore=staticfiles
	$(THROWAWAY_KEYS) && $(PY) manage.py compilemessages --ignore=.venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles
