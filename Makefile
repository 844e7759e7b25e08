# One command to serve the site, one to test it; both set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install browser nginx vendor run serve test lint typecheck format migrations-check bench bench-quick ci clean screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# The browser tests drive Debian's Chromium (Playwright cannot download browsers here).
browser:
	@if [ -x "$${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "The browser tests need Chromium: run 'sudo apt-get install chromium'" \
			"(or set CHROMIUM_PATH), then 'make test' again." >&2; exit 1; \
	fi

# The proxy tests start Debian's nginx with deploy/nginx.conf on loopback ports.
nginx:
	@if [ -x "$${NGINX_PATH:-/usr/sbin/nginx}" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; \
	else \
		echo "The proxy tests need nginx: run 'sudo apt-get install nginx'" \
			"(or set NGINX_PATH), then 'make test' again." >&2; exit 1; \
	fi

run: export DJANGO_DEBUG ?= 1
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py interrupt_stale_replies --older-than 0
	$(BIN)/python manage.py ensure_demo_user
	$(BIN)/python -m chatsite.serve chatsite.asgi:application --host $(HOST) --port $(PORT) --no-proxy-headers

# Production: settings come from the environment (see README, "Serving in production"); the
# deploy checks print their warnings, static files are collected, migrations applied, then
# WEB_CONCURRENCY workers (2 by default; more than one needs REDIS_URL) serve on HOST:PORT. With
# several workers the launcher gives them a fresh directory for their metrics (/metrics adds them
# up), removed when the server stops; PROMETHEUS_MULTIPROC_DIR names one to use instead.
serve: export DJANGO_DEBUG = 0
serve: install
	$(BIN)/python manage.py check --deploy
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py migrate --noinput
	exec $(BIN)/python -m chatsite.serve chatsite.asgi:application --host $(HOST) --port $(PORT) \
		--workers $${WEB_CONCURRENCY:-2} --no-proxy-headers --no-access-log

# Refresh the browser libraries committed under static/vendor/ from the npm registry (needs npm;
# never run by test, ci, run or serve: the files are committed).
vendor:
	sh scripts/vendor_js.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy with django-stubs over chatsite/ and conversations/ ([tool.mypy] in pyproject.toml); the
# django-stubs plugin imports chatsite.settings, which needs DJANGO_DEBUG=1 without a secret key.
typecheck: install
	DJANGO_DEBUG=1 $(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrations-check: install
	DJANGO_DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

# The whole suite on the fast path, then the tests of the site's behaviour over HTTP again with
# CHAT_FAST_PATH=0 (Django's stock handler, middlewares and ORM statements): the fast path must
# change nothing they see. On PostgreSQL whenever one answers on 127.0.0.1:5432 (it says which).
STOCK_TESTS := tests/test_stream_contract.py tests/test_stream_persistence.py \
	tests/test_limits.py tests/test_api.py tests/test_callers.py \
	tests/test_upstream_connection.py tests/test_request_bodies.py tests/test_stock_mode.py \
	tests/test_versions.py tests/test_usage.py \
	tests/test_deploy_checks.py::test_forwarded_proto_counts_only_from_a_trusted_proxy \
	tests/test_serving.py::test_a_stopping_worker_lets_short_replies_finish_and_saves_the_rest_interrupted

test: install browser nginx lint typecheck migrations-check
	@database_url="$$($(BIN)/python scripts/test_database.py)" && \
	DATABASE_URL="$$database_url" $(BIN)/pytest && \
	echo "make test: again on stock Django (CHAT_FAST_PATH=0): $(STOCK_TESTS)" && \
	DATABASE_URL="$$database_url" CHAT_FAST_PATH=0 $(BIN)/pytest $(STOCK_TESTS)

# Refresh the README's screenshots of the chat page (tests/artifacts/chat-page.png, light;
# chat-page-dark.png; chat-page-phone.png).
screenshot: install browser
	UPDATE_SCREENSHOT=1 $(BIN)/pytest tests/test_chat_ui.py -k watches_the_reply_grow
	UPDATE_SCREENSHOT=1 $(BIN)/pytest tests/test_chat_layout.py -k screenshots

# The relay against its peers, on the fast path and on stock Django (chatsite-stock) side by
# side (needs PostgreSQL and Redis on 127.0.0.1; a few minutes).
bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick

ci: test bench-quick

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache .mypy_cache
