"""Shared fixtures: the fake upstream, the site served by uvicorn on loopback, users and clients.

The site runs in its own process against the test database, exactly as in production but for
the upstream's address; tests talk to it over real HTTP and read what it saved from the database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client as DjangoClient

from tests.browser import CHROMIUM_ARGS, chromium_path
from tests.fake_upstream import FakeUpstream
from tests.helpers import session_client

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-test-upstream-key-7f3a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for(settings_dict: dict) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    credentials = settings_dict["USER"]
    if settings_dict["PASSWORD"]:
        credentials += f":{settings_dict['PASSWORD']}"
    host = settings_dict["HOST"] or "127.0.0.1"
    port = settings_dict["PORT"] or "5432"
    return f"postgres://{credentials}@{host}:{port}/{settings_dict['NAME']}"


class LiveServer:
    """uvicorn serving chatsite in a child process, with its log kept for assertions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatsite.serve",
                "chatsite.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--no-proxy-headers",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_ready()

    def _wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited early:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/accounts/login/", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


def pytest_report_header(config) -> str:
    """Which database and which mode the run is on (``make test`` runs twice: the fast path,
    then its STOCK_TESTS with CHAT_FAST_PATH=0)."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    mode = "the fast path" if settings.CHAT_FAST_PATH else "stock Django"
    return (
        f"chatsite: CHAT_FAST_PATH={int(settings.CHAT_FAST_PATH)} ({mode}), "
        f"database {database['ENGINE'].rsplit('.', 1)[-1]} {database['NAME']}"
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis, for what several server processes share; CI must have it."""
    url = os.environ.get("REDIS_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must set REDIS_URL so the cross-process tests run against Redis.")
        pytest.skip("REDIS_URL is not set: several processes share state through Redis only.")
    return url


@contextmanager
def upstream_running() -> Iterator[FakeUpstream]:
    """A scripted upstream on a loopback port, stopped (its port closed) when the block ends."""
    upstream = FakeUpstream(api_key=UPSTREAM_KEY)
    upstream.start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    """The upstream of the session's shared server: scripts and requests of every test pile up
    in it, so each test scripts triggers of its own."""
    with upstream_running() as upstream:
        yield upstream


@pytest.fixture
def own_upstream() -> Iterator[FakeUpstream]:
    """A scripted upstream of this test's own (no other test's scripts or requests in it),
    stopped after the test."""
    with upstream_running() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def server_env(django_db_setup, django_db_blocker) -> dict[str, str]:
    """The environment of a production-like server process on the test database."""
    from django.conf import settings
    from django.db import connection

    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECURE_COOKIES": "0",
        "DATABASE_URL": database_url_for(connection.settings_dict),
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_MAX_RETRIES": "0",
        "OPENAI_TIMEOUT_SECONDS": "10",
        "CHAT_MODEL": "fake-model",
        "CHAT_KEEPALIVE_SECONDS": "1",
        # With Redis, a killed server's replies can be settled within a second.
        "CHAT_HEARTBEAT_SECONDS": "0.2",
        "PYTHONUNBUFFERED": "1",
        # The run's mode: the fast path, or stock Django (make test's second run).
        "CHAT_FAST_PATH": "1" if settings.CHAT_FAST_PATH else "0",
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return env


_MODULE_SERVERS: list[LiveServer] = []
"""Servers started by the running test module: stopped when it ends. Each holds its own
database pools and PostgreSQL allows 100 connections in all, so they must not pile up."""


@pytest.fixture(scope="session")
def start_server(server_env, tmp_path_factory) -> Iterator[Callable[..., LiveServer]]:
    """Start a server with its own settings; stopped when the test module ends, or with
    ``keep=True`` (the session's shared server) at the end of the session."""
    kept: list[LiveServer] = []

    def start(name: str, *, keep: bool = False, **overrides: str) -> LiveServer:
        log_path = tmp_path_factory.mktemp("logs") / f"{name}.log"
        server = LiveServer({**server_env, **overrides}, log_path)
        (kept if keep else _MODULE_SERVERS).append(server)
        return server

    yield start
    _stop_all(_MODULE_SERVERS)
    _stop_all(kept)


@pytest.fixture(scope="module", autouse=True)
def stop_the_modules_servers() -> Iterator[None]:
    yield
    _stop_all(_MODULE_SERVERS)


def _stop_all(servers: list[LiveServer]) -> None:
    while servers:
        servers.pop().stop()


@pytest.fixture(scope="session")
def live_server_process(start_server, fake_upstream) -> LiveServer:
    """The site on the openai provider, talking to the fake upstream."""
    return start_server(
        "openai", keep=True, CHAT_PROVIDER="openai", OPENAI_BASE_URL=fake_upstream.base_url
    )


@pytest.fixture
def server(live_server_process, transactional_db) -> LiveServer:
    return live_server_process


@pytest.fixture(autouse=True)
def settle_replies(request):
    """After a database test, let the servers finish saving replies before tables are flushed
    (a flush racing a server's final UPDATE can deadlock on PostgreSQL)."""
    if "transactional_db" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")
    yield
    from conversations.models import Message

    deadline = time.monotonic() + 5
    while Message.objects.filter(status="streaming").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def make_user(transactional_db):
    def make(username: str = "alice", **fields):
        user = get_user_model()(username=username, **fields)
        user.set_unusable_password()
        user.save()
        return user

    return make


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def client_for(server):
    clients: list[httpx.Client] = []

    def make(user) -> httpx.Client:
        client = session_client(server.url, user)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(client_for, user) -> httpx.Client:
    return client_for(user)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium; a missing browser fails the run (``make test`` installs it)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        pytest.fail("Chromium is missing: run `make test` as root, or `apt-get install chromium`.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page_for(browser, server):
    """A fresh browser context signed in as the given user (session cookie, no form), on the
    shared server or the one given."""
    contexts = []

    def make(user, site: LiveServer | None = None, **context_options):
        site = site or server
        django_client = DjangoClient()
        django_client.force_login(user)
        context = browser.new_context(base_url=site.url, **context_options)
        context.add_cookies(
            [
                {
                    "name": "sessionid",
                    "value": django_client.cookies["sessionid"].value,
                    "url": site.url,
                }
            ]
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        return page

    yield make
    for context in contexts:
        context.close()
