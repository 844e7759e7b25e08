"""Settings come from the environment, with safe local defaults and fast failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from django.conf import settings
from django.core.cache import cache

from chatsite.settings import database_from_url
from tests.conftest import ROOT


def run_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_start_without_secret_key_when_debug_is_off():
    result = run_settings(DJANGO_DEBUG="0")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_starts_with_a_development_key_when_debug_is_on():
    result = run_settings(DJANGO_DEBUG="1")

    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


def test_openai_provider_requires_an_api_key():
    result = run_settings(DJANGO_DEBUG="1", CHAT_PROVIDER="openai", OPENAI_API_KEY="")

    assert result.returncode != 0
    assert "OPENAI_API_KEY is required" in result.stderr


def test_refuses_to_start_with_a_malformed_rate_limit():
    result = run_settings(DJANGO_DEBUG="1", CHAT_RATE_LIMIT="lots")

    assert result.returncode != 0
    assert "CHAT_RATE_LIMIT: not a rate: 'lots'" in result.stderr


def test_sqlite_url_is_relative_to_the_project_unless_absolute():
    relative = database_from_url("sqlite:///db.sqlite3")
    absolute = database_from_url("sqlite:////tmp/chat.sqlite3")

    assert relative["NAME"] == str(ROOT / "db.sqlite3")
    assert absolute["NAME"] == "/tmp/chat.sqlite3"
    assert relative["ENGINE"] == "django.db.backends.sqlite3"


def test_postgres_url_selects_psycopg_with_a_connection_pool():
    config = database_from_url("postgres://chat:s%40cret@db.internal:6543/chatsite")

    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"]) == ("chat", "s@cret")
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.internal", "6543", "chatsite")
    assert config["OPTIONS"]["pool"]["max_size"] >= 1


def test_cache_is_redis_exactly_when_redis_url_is_set():
    backend = settings.CACHES["default"]["BACKEND"]
    if os.environ.get("REDIS_URL"):
        assert backend == "django.core.cache.backends.redis.RedisCache"
    else:
        assert backend == "django.core.cache.backends.locmem.LocMemCache"
    cache.set("settings-test", "round trip", 5)
    assert cache.get("settings-test") == "round trip"
    cache.delete("settings-test")


def test_env_example_lists_every_setting_the_settings_read():
    source = (ROOT / "chatsite" / "settings.py").read_text()
    read = set(re.findall(r'env_(?:str|bool|number|list)\(\s*"([A-Z0-9_]+)"', source))
    # The HTTP server's and the launcher's own settings, read before Django's settings are.
    for module in ("http_protocol.py", "serve.py"):
        read |= set(
            re.findall(r'ENV_NAME = "([A-Z0-9_]+)"', (ROOT / "chatsite" / module).read_text())
        )
    listed = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))

    assert len(read) > 20
    assert read - listed == set(), "settings missing from .env.example"
    assert listed - read == set(), ".env.example lists settings that are not read"


def test_refuses_to_start_with_a_malformed_sign_in_rate():
    result = run_settings(DJANGO_DEBUG="1", CHAT_SIGNIN_RATE_PER_USERNAME="5 a minute")

    assert result.returncode != 0
    assert "CHAT_SIGNIN_RATE_PER_USERNAME: not a rate: '5 a minute'" in result.stderr
