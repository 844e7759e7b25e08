"""Is my proxy buffering? The diagnostics stream, and ``manage.py check_streaming`` reading it
from uvicorn directly and through Debian's nginx with the shipped deploy/nginx.conf and
variants of it; staff see a warning on the chat page when replies arrive in bursts.

What holds frames back in nginx (1.22, measured): not ``proxy_buffering on`` alone, since
nginx passes on each complete chunk of uvicorn's chunked body as it comes; but buffering with
gzip does, the whole stream then arriving at its end. The site's ``X-Accel-Buffering: no``
turns buffering off unless nginx ignores that header, so the variants that buffer ignore it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from playwright.sync_api import expect

from conversations.streaming_check import Tick, tick_spacing
from conversations.tokens import api_token_create
from tests.conftest import ROOT, free_port
from tests.nginx import Nginx, nginx_binary
from tests.sse import iter_frames
from tests.test_chat_ui import send

BUFFERING = {
    "proxy_buffering off;": "proxy_buffering on;\n        proxy_ignore_headers X-Accel-Buffering;"
}
GZIP = {"gzip off;": "gzip on;\n        gzip_types text/event-stream;\n        gzip_min_length 1;"}
SHORT_READ_TIMEOUT = {"proxy_read_timeout 75s;": "proxy_read_timeout 1s;"}


@pytest.fixture(scope="module")
def nginx_path() -> str:
    binary = nginx_binary()
    if binary is None:
        message = "nginx is not installed: `make test` installs Debian's package (as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def proxy(nginx_path, live_server_process, tmp_path_factory):
    """nginx in front of the shared server, from the template with the given replacements."""
    started: list[Nginx] = []

    def start(**replacements: str) -> Nginx:
        directory = tmp_path_factory.mktemp("nginx")
        upstreams = [live_server_process.port]
        started.append(Nginx(nginx_path, directory, free_port(), upstreams, replacements))
        return started[-1]

    yield start
    for nginx in started:
        nginx.stop()


@pytest.fixture
def staff_token(make_user) -> str:
    return api_token_create(owner=make_user("operator", is_staff=True))[1]


def check_streaming(server_env, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check_streaming", url, *args],
        cwd=ROOT,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def result_of(run: subprocess.CompletedProcess) -> str:
    lines = run.stdout.splitlines()
    assert lines, run.stderr
    assert lines[-1].startswith("Result: "), run.stdout
    return lines[-1].removeprefix("Result: ")


def ticks(sent: list[float], received: list[float]) -> list[Tick]:
    return [Tick(seq, s, r) for seq, (s, r) in enumerate(zip(sent, received, strict=True), 1)]


def test_frames_late_by_varying_amounts_are_not_taken_for_bursts():
    sent = [0, 200, 400, 600, 800, 1000]
    spacing = tick_spacing(ticks(sent, [30, 260, 420, 700, 815, 1040]))

    assert not spacing.buffered
    assert spacing.bursts == 6
    assert spacing.held_ms == 85  # the fourth frame: 100 ms on the way, the quickest 15


def test_frames_let_through_in_lumps_are_bursts():
    sent = [0, 200, 400, 600, 800, 1000]
    at_the_end = tick_spacing(ticks(sent, [1010, 1010, 1011, 1011, 1011, 1012]))
    in_two_lumps = tick_spacing(ticks(sent, [410, 411, 411, 1005, 1006, 1006]))

    assert at_the_end.buffered and at_the_end.bursts == 1
    assert at_the_end.held_ms == 998  # the first frame: 1010 ms on the way, the last 12
    assert in_two_lumps.buffered and in_two_lumps.bursts == 2
    assert at_the_end.sent_ms == 200 and at_the_end.received_ms == 0


def test_the_stream_sends_its_frames_at_the_spacing_asked_with_their_send_times(
    server, staff_token
):
    with (
        httpx.Client(base_url=server.url, timeout=15) as client,
        client.stream(
            "GET",
            "/api/diagnostics/stream",
            params={"count": 5, "interval_ms": 100},
            headers={"Authorization": f"Bearer {staff_token}"},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["ratelimit-limit"] == "100"  # counted like every API request
        frames = [frame for frame in iter_frames(response) if frame.has_data]

    assert [frame.event for frame in frames] == ["tick"] * 5 + ["end"]
    ticks = [frame.json() for frame in frames[:5]]
    assert [tick["seq"] for tick in ticks] == [1, 2, 3, 4, 5]
    assert [frame.get("id") for frame in frames[:5]] == ["1", "2", "3", "4", "5"]
    assert ticks[0]["sent_ms"] == 0
    for earlier, later in zip(ticks, ticks[1:], strict=False):
        assert 90 <= later["sent_ms"] - earlier["sent_ms"] <= 250
    # Due at fixed times from the first: late wake-ups do not add up.
    assert 400 <= ticks[-1]["sent_ms"] <= 500
    assert ticks[0]["sent_at"].endswith("+00:00")
    arrivals = [frame.received_at for frame in frames[:5]]
    assert arrivals[-1] - arrivals[0] >= 0.35
    assert frames[-1].json() == {"count": 5}


def test_only_staff_may_read_the_stream(server, make_user, client_for):
    plain = make_user("pat")
    _, token = api_token_create(owner=plain)

    by_token = httpx.get(
        f"{server.url}/api/diagnostics/stream", headers={"Authorization": f"Bearer {token}"}
    )
    by_session = client_for(plain).get("/api/diagnostics/stream")
    anonymous = httpx.get(f"{server.url}/api/diagnostics/stream")

    for refused in (by_token, by_session):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "staff_only"
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"


def test_a_staff_session_may_read_it_and_its_parameters_are_bounded(server, make_user, client_for):
    client = client_for(make_user("sam", is_staff=True))

    ok = client.get("/api/diagnostics/stream", params={"count": 2, "interval_ms": 50})
    too_many = client.get("/api/diagnostics/stream", params={"count": 101})
    too_fast = client.get("/api/diagnostics/stream", params={"interval_ms": 10})
    too_idle = client.get("/api/diagnostics/stream", params={"idle_seconds": 301})

    assert ok.status_code == 200
    assert ok.text.count("event: tick") == 2
    assert too_many.status_code == too_fast.status_code == too_idle.status_code == 400
    assert too_many.json()["error"]["message"] == "'count' must be an integer from 2 to 100."
    assert "'idle_seconds' must be an integer from 0 to 300." in too_idle.text


def test_check_streaming_against_uvicorn_directly_says_ok(server, server_env, staff_token):
    run = check_streaming(server_env, server.url, "--token", staff_token)

    assert run.returncode == 0, run.stdout + run.stderr
    assert result_of(run) == "ok"
    assert "Spacing: ok: sent 200 ms apart" in run.stdout
    assert "each on its own" in run.stdout
    assert "Compression: none." in run.stdout


@pytest.mark.parametrize(
    ("variant", "replacements"),
    [
        ("the shipped template", {}),
        ("buffering on: nginx still passes each chunk on as it comes", BUFFERING),
    ],
)
def test_check_streaming_through_nginx_that_lets_frames_through_says_ok(
    proxy, server_env, staff_token, variant, replacements
):
    nginx = proxy(**replacements)

    run = check_streaming(server_env, nginx.url, "--token", staff_token)

    assert run.returncode == 0, run.stdout + run.stderr
    assert result_of(run) == "ok", variant


def test_check_streaming_through_nginx_that_buffers_says_buffered(proxy, server_env, staff_token):
    nginx = proxy(**BUFFERING, **GZIP)

    run = check_streaming(server_env, nginx.url, "--token", staff_token)

    assert run.returncode == 1
    assert result_of(run) == "buffered, compressed"
    spacing = next(line for line in run.stdout.splitlines() if line.startswith("Spacing:"))
    assert spacing.startswith("Spacing: buffered: something between the site and this client")
    assert "in 1 burst(s) for 10 frames" in spacing
    assert "Content-Encoding: gzip" in run.stdout


def test_check_streaming_through_nginx_that_compresses_says_compressed(
    proxy, server_env, staff_token
):
    nginx = proxy(**GZIP)

    run = check_streaming(server_env, nginx.url, "--token", staff_token)

    assert run.returncode == 1
    assert result_of(run) == "compressed"
    assert "Spacing: ok:" in run.stdout


def test_check_streaming_with_an_idle_gap_finds_a_proxy_that_cuts_silent_connections(
    proxy, server_env, staff_token
):
    cutting = proxy(**SHORT_READ_TIMEOUT)
    patient = proxy()

    cut = check_streaming(
        server_env, cutting.url, "--token", staff_token, "--count", "3", "--idle", "3"
    )
    kept = check_streaming(
        server_env, patient.url, "--token", staff_token, "--count", "3", "--idle", "2"
    )

    assert cut.returncode == 1
    assert result_of(cut) == "cut"
    assert "Idle connections: cut: the connection was closed after" in cut.stdout
    assert "(the site was to stay silent 3 s)" in cut.stdout
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert result_of(kept) == "ok"
    assert "Idle connections: ok: the connection stayed open through 2." in kept.stdout


def test_check_streaming_says_why_it_cannot_check(server, server_env, make_user):
    _, plain_token = api_token_create(owner=make_user("pat"))

    anonymous = check_streaming(server_env, server.url)
    not_staff = check_streaming(server_env, server.url, "--token", plain_token)
    nobody = check_streaming(server_env, f"http://127.0.0.1:{free_port()}")

    assert anonymous.returncode == not_staff.returncode == nobody.returncode == 2
    assert "The site answered 401" in anonymous.stderr
    assert "Pass --token with an API token of a staff user." in anonymous.stderr
    assert "The site answered 403: Only staff may use this endpoint." in not_staff.stderr
    assert "Could not read" in nobody.stderr
    assert plain_token not in not_staff.stdout + not_staff.stderr


# --- The chat page ------------------------------------------------------------------------


def bursts_page(browser_page_for, user, site):
    page = browser_page_for(user, site)
    page.goto("/")
    return page


def test_staff_are_warned_on_the_chat_page_when_replies_arrive_in_bursts(
    proxy, browser_page_for, make_user, fake_upstream
):
    nginx = proxy(**BUFFERING, **GZIP)
    fake_upstream.script("burst me", tokens=[f"b{i} " for i in range(30)], interval=0.05)
    page = bursts_page(browser_page_for, make_user("ops", is_staff=True), nginx)
    warning = page.locator("#stream-warning")
    expect(warning).to_be_hidden()

    send(page, "burst me")

    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(1)
    expect(warning).to_have_attribute("data-replies", "1")  # the reply was judged
    expect(warning).to_be_visible()
    expect(warning).to_have_text(
        "Staff: replies reach this page in bursts, so something between the server and this "
        "browser buffers the stream. Run manage.py check_streaming to find it."
    )


@pytest.mark.parametrize("who", ["staff, frames on time", "not staff, frames in bursts"])
def test_no_warning_when_frames_arrive_on_time_or_for_anyone_but_staff(
    proxy, browser_page_for, make_user, fake_upstream, who
):
    staff = who.startswith("staff")
    nginx = proxy() if staff else proxy(**BUFFERING, **GZIP)
    trigger = f"steady {'staff' if staff else 'user'}"
    fake_upstream.script(trigger, tokens=[f"s{i} " for i in range(30)], interval=0.05)
    page = bursts_page(browser_page_for, make_user("viewer", is_staff=staff), nginx)

    send(page, trigger)

    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(1)
    expect(page.get_by_role("status")).to_have_text("The reply is complete.")
    if staff:
        expect(page.locator("#stream-warning")).to_have_attribute("data-replies", "1")
        expect(page.locator("#stream-warning")).to_be_hidden()
    else:
        assert page.locator("#stream-warning").count() == 0
        assert page.locator("#composer").get_attribute("data-staff") is None
