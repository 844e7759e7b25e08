"""`manage.py check --deploy` sees chatsite's middlewares (subclasses of Django's); HTTPS settings
come from the environment, and X-Forwarded-Proto is believed only from CHAT_TRUSTED_PROXIES."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import httpx
import pytest
from django.core.checks import run_checks

from tests.conftest import ROOT

DEPLOYED = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
}
# What README-auth-notes.md and .env.example document for a site behind a TLS-ending proxy.
PRODUCTION = {
    **DEPLOYED,
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_SECURE_HSTS_PRELOAD": "1",
    "CHAT_TRUSTED_PROXIES": "10.0.0.5",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
}


def check_deploy(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("redis_url", ["redis://127.0.0.1:6379/0", ""], ids=["redis", "no-redis"])
def test_documented_production_settings_pass_check_deploy_without_a_warning(redis_url):
    result = check_deploy(**PRODUCTION, REDIS_URL=redis_url)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stderr


def test_check_deploy_reports_hsts_and_ssl_redirect_left_off():
    result = check_deploy(**DEPLOYED)

    assert result.returncode != 0
    assert "(security.W004) You have not set a value for the SECURE_HSTS_SECONDS" in result.stderr
    assert "(security.W008) Your SECURE_SSL_REDIRECT setting is not set to True" in result.stderr
    assert "security.W001" not in result.stderr and "chatsite.W001" not in result.stderr


def deploy_check_ids() -> set[str]:
    return {message.id for message in run_checks(include_deployment_checks=True)}


def test_a_missing_security_csrf_or_frame_middleware_is_reported(settings):
    settings.MIDDLEWARE = [
        path
        for path in settings.MIDDLEWARE
        if not path.endswith(
            ("SecurityMiddleware", "CsrfViewMiddleware", "XFrameOptionsMiddleware")
        )
    ]

    ids = deploy_check_ids()

    assert {"chatsite.W001", "chatsite.W002", "chatsite.W003"} <= ids
    assert "security.W016" not in ids  # depends on the CSRF middleware, as in Django


def test_the_stock_middlewares_and_their_subclasses_both_count(settings):
    settings.SECURE_SSL_REDIRECT = False
    subclasses = deploy_check_ids()
    settings.MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]
    stock = deploy_check_ids()

    for ids in (subclasses, stock):
        assert not {"chatsite.W001", "chatsite.W002", "chatsite.W003"} & ids
        assert "security.W008" in ids  # the checks that need the middleware ran


def test_forwarded_proto_needs_trusted_proxies():
    result = check_deploy(DJANGO_DEBUG="1", DJANGO_SECURE_PROXY_SSL_HEADER="1")

    assert result.returncode != 0
    assert "DJANGO_SECURE_PROXY_SSL_HEADER=1 needs CHAT_TRUSTED_PROXIES" in result.stderr


@pytest.fixture(scope="module")
def https_server(start_server):
    return start_server(
        "https-behind-proxy",
        CHAT_PROVIDER="demo",
        CHAT_MODEL="demo",
        DJANGO_SECURE_SSL_REDIRECT="1",
        DJANGO_SECURE_HSTS_SECONDS="3600",
        DJANGO_SECURE_PROXY_SSL_HEADER="1",
        CHAT_TRUSTED_PROXIES="127.0.0.2",
    )


def get_from(server, address: str, **headers: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=server.url, transport=transport, timeout=15) as client:
        return client.get("/accounts/login/", headers=headers)


def test_forwarded_proto_counts_only_from_a_trusted_proxy(https_server):
    spoofed = get_from(https_server, "127.0.0.1", **{"X-Forwarded-Proto": "https"})
    proxied = get_from(https_server, "127.0.0.2", **{"X-Forwarded-Proto": "https"})
    proxied_plain = get_from(https_server, "127.0.0.2")

    assert spoofed.status_code == 301
    assert spoofed.headers["location"] == f"https://127.0.0.1:{https_server.port}/accounts/login/"
    assert "strict-transport-security" not in spoofed.headers
    assert proxied.status_code == 200
    assert proxied.headers["strict-transport-security"] == "max-age=3600"
    assert proxied_plain.status_code == 301
