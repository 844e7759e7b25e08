"""Starting the site for production: the launcher refuses a setup that would silently keep
shared state per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port


def launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "chatsite.serve", "chatsite.asgi:application"]
    return subprocess.run(
        [*command, "--port", str(free_port()), "--lifespan", "off", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "extra"),
    [(("--workers", "2"), {}), ((), {"WEB_CONCURRENCY": "3"})],
    ids=["--workers", "WEB_CONCURRENCY"],
)
def test_several_workers_without_redis_refuse_to_start(server_env, args, extra):
    env = {k: v for k, v in server_env.items() if k != "REDIS_URL"} | extra

    started = launch(env, *args)

    assert started.returncode != 0
    assert "workers need REDIS_URL" in started.stderr
    assert "Started server process" not in started.stderr + started.stdout
