# Cabinet: `make run` serves a demo clinic locally; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install env migrate seed lint messages clean

$(STAMP): requirements.txt requirements-dev.txt
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

seed: migrate
	$(PY) manage.py seed_demo

run: seed
	@echo "Cabinet on http://127.0.0.1:8000/ (log in as secretary, doctor, doctor2 or admin)"
	$(PY) manage.py runserver 127.0.0.1:8000

# The suite needs keys too: tests use a throwaway set, never the .env of `make run`.
test: install
	$(PY) -m practice.keygen > $(VENV)/test.env
	set -a && . $(VENV)/test.env && set +a && DEBUG=0 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

messages: install
	$(PY) manage.py makemessages -l fr --ignore=.venv --ignore=bench
	$(PY) manage.py compilemessages --ignore=.venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles
