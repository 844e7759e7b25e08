"""`manage.py check --deploy` sees chatsite's middlewares (subclasses of Django's)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from django.core.checks import run_checks

from tests.conftest import ROOT

DEPLOYED = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
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
