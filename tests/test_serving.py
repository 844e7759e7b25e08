"""Starting the site for production: the launcher refuses a setup that would silently keep
shared state per process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conversations.models import Message
from conversations.tokens import api_token_create
from tests.conftest import ROOT, free_port
from tests.helpers import wait_for
from tests.sse import iter_frames
from tests.test_deploy_checks import DEPLOYED


def launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "chatsite.serve", "chatsite.asgi:application"]
    return subprocess.run(
        [*command, "--port", str(free_port()), *args],
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


def test_a_stopping_worker_lets_short_replies_finish_and_saves_the_rest_interrupted(
    start_server, fake_upstream, make_user
):
    """SIGTERM: no new connections; a reply that ends within CHAT_SHUTDOWN_GRACE_SECONDS ends
    complete; one still running then is cut and saved ``interrupted`` with its text so far."""
    worker = start_server(
        "stopping",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_SHUTDOWN_GRACE_SECONDS="2",
    )
    fake_upstream.script("short before stop", tokens=[f"s{i} " for i in range(4)], interval=0.3)
    fake_upstream.script("long before stop", tokens=[f"l{i} " for i in range(600)], interval=0.05)
    _, token = api_token_create(owner=make_user("sigrid"))
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=worker.url, headers=headers, timeout=30) as client:
        with (
            client.stream(
                "GET", "/api/chat/stream", params={"message": "short before stop"}
            ) as short,
            client.stream(
                "GET", "/api/chat/stream", params={"message": "long before stop"}
            ) as long,
        ):
            short_frames, long_frames = iter_frames(short), iter_frames(long)
            first_short = next(frame for frame in short_frames if frame.has_data)
            first_long = next(frame for frame in long_frames if frame.has_data)
            worker.process.send_signal(signal.SIGTERM)
            short_rest = [frame.data for frame in short_frames if frame.has_data]
            long_rest = []
            with pytest.raises(httpx.RemoteProtocolError):  # cut off mid-stream
                long_rest.extend(frame.data for frame in long_frames if frame.has_data)
            short_id, long_id = (int(r.headers["x-message-id"]) for r in (short, long))
        worker.process.wait(15)
        with pytest.raises(httpx.ConnectError):
            client.get("/healthz")

    assert [first_short.data, *short_rest] == ['"s0 "', '"s1 "', '"s2 "', '"s3 "', "[DONE]"]
    assert "[DONE]" not in long_rest
    assert Message.objects.get(pk=short_id).status == Message.Status.COMPLETE
    interrupted = Message.objects.get(pk=long_id)
    assert interrupted.status == Message.Status.INTERRUPTED
    assert interrupted.content.startswith("l0 l1 ")
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in worker.log()
    assert first_long.data == '"l0 "'


def test_make_serve_checks_collects_migrates_and_serves_with_several_workers(
    server_env, redis_url, tmp_path
):
    port = free_port()
    env = {
        **{k: v for k, v in server_env.items() if not k.startswith("DJANGO_")},
        **DEPLOYED,
        "REDIS_URL": redis_url,
        "WEB_CONCURRENCY": "2",
        "PORT": str(port),
    }
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: log_path.read_text().count("Started server process") == 2, 90)
            ready = httpx.get(
                f"http://127.0.0.1:{port}/readyz", headers={"Host": "chat.example.com"}
            )
            # As a process manager stops it: SIGTERM to the server, which make waits for.
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            os.kill(int(children.split()[0]), signal.SIGTERM)
            process.wait(30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)

    output = log_path.read_text()
    assert ready.status_code == 200, output
    assert "System check identified" in output  # the deploy checks ran (and warned: no HTTPS)
    assert "Running migrations:" in output
    assert process.returncode == 0, output
