"""The replies dashboard in the admin: the last 24 hours and 30 days from the saved replies,
its charts drawn as inline SVG under the site's CSP; staff only."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from playwright.sync_api import expect

from conversations.charts import nice_ceiling, stacked_bar_chart
from conversations.dashboard import percentile, reply_dashboard
from conversations.models import Conversation, Message
from tests.helpers import session_client, wait_for

DASHBOARD = "/admin/conversations/message/dashboard/"


@pytest.fixture
def staff(make_user):
    return make_user("staff", is_staff=True, is_superuser=True)


def reply(owner, age: timedelta, *, status="complete", **fields) -> Message:
    """An assistant reply (after its user message) started ``age`` ago."""
    conversation = Conversation.objects.create(owner=owner, title="t")
    Message.objects.create(conversation=conversation, role="user", content="q")
    message = Message.objects.create(
        conversation=conversation, role="assistant", content="a", status=status, **fields
    )
    Message.objects.filter(conversation=conversation).update(created_at=timezone.now() - age)
    return message


@pytest.fixture
def replies(make_user):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    hours, days = timedelta(hours=1), timedelta(days=1)
    # The last 24 hours.
    reply(
        alice,
        timedelta(minutes=10),
        ttft_ms=100,
        duration_ms=1100,
        prompt_tokens=10,
        completion_tokens=50,
    )
    reply(alice, 2 * hours, ttft_ms=200, duration_ms=2200, prompt_tokens=20, completion_tokens=100)
    reply(bob, 3 * hours, status="error", error_code="upstream_timeout")
    reply(bob, 3 * hours, status="error", error_code="upstream_rate_limited")
    reply(bob, 4 * hours, status="error", error_code="stream_timeout", ttft_ms=None)
    reply(
        bob,
        5 * hours,
        status="cancelled",
        error_code="stopped",
        ttft_ms=400,
        duration_ms=900,
        prompt_tokens=5,
        completion_tokens=10,
    )
    # Earlier in the last 30 days.
    reply(carol, 5 * days, ttft_ms=1000, duration_ms=3000, prompt_tokens=100, completion_tokens=500)
    reply(carol, 5 * days, status="error", error_code="upstream_timeout")
    # Before both.
    reply(carol, 40 * days, ttft_ms=5, duration_ms=10_000, prompt_tokens=9999,
          completion_tokens=9999)  # fmt: skip


def period(page: str, unit: str) -> str:
    """The section of one period of the page."""
    start = page.index(f'<section class="dashboard-period" id="period-{unit}"')
    return page[start : page.index("</section>", start)]


def figures(section: str) -> dict[str, str]:
    return dict(re.findall(r'<dd data-figure="([\w-]+)">([^<]*)</dd>', section))


def table(section: str, css_class: str) -> list[list[str]]:
    body = re.search(rf'<table class="{css_class}">.*?<tbody>(.*?)</tbody>', section, re.S)
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in body.group(1).split("</tr>")[:-1]]


def test_staff_see_the_figures_of_the_replies_of_each_period(server, staff, replies):
    with session_client(server.url, staff) as client:
        response = client.get(DASHBOARD)

    assert response.status_code == 200
    day, month = period(response.text, "hour"), period(response.text, "day")
    assert figures(day) == {
        "replies": "6",
        "ttft-p50": "200 ms",
        "ttft-p95": "380 ms",  # percentile_cont of 100, 200, 400
        "tokens-per-second": "45.7",  # 160 tokens in 1.0 + 2.0 + 0.5 s after the first token
        "completion-tokens": "160",
    }
    assert figures(month) == {
        "replies": "8",
        "ttft-p50": "300 ms",
        "ttft-p95": "910 ms",
        "tokens-per-second": "120.0",  # 660 tokens in 5.5 s
        "completion-tokens": "660",
    }
    assert table(day, "dashboard-errors") == [
        ["upstream_rate_limited", "1"],
        ["upstream_timeout", "1"],
    ]
    assert table(month, "dashboard-errors") == [
        ["upstream_timeout", "2"],
        ["upstream_rate_limited", "1"],
    ]
    assert table(day, "dashboard-users") == [["alice", "180", "2"], ["bob", "15", "4"]]
    assert table(month, "dashboard-users") == [
        ["carol", "600", "2"], ["alice", "180", "2"], ["bob", "15", "4"]
    ]  # fmt: skip


def test_the_charts_are_inline_svg_with_a_bar_per_hour_and_day_by_status(server, staff, replies):
    with session_client(server.url, staff) as client:
        page = client.get(DASHBOARD).text

    day, month = period(page, "hour"), period(page, "day")
    for section, columns in ((day, 24), (month, 30)):
        assert section.count('<svg class="chart"') == 1
        assert section.count('<g class="chart-column">') == columns
        assert 'role="img"' in section
    three_hours_ago = timezone.localtime(timezone.now() - timedelta(hours=3))
    label = three_hours_ago.strftime("%H:00")
    assert f"<title>{label}: error 2</title>" in day
    assert day.count('<rect class="chart-error"') == 2  # 3 h and 4 h ago
    assert day.count('<rect class="chart-complete"') == 2  # 10 min and 2 h ago
    five_days_ago = timezone.localtime(timezone.now() - timedelta(days=5)).strftime("%d %b")
    assert f"<title>{five_days_ago}: complete 1, error 1</title>" in month
    legend = re.findall(r'chart-swatch chart-(\w+)".*?chart-legend-total">(\d+)<', day)
    assert dict(legend) == {
        "streaming": "0", "complete": "2", "cancelled": "1", "error": "3", "interrupted": "0"
    }  # fmt: skip
    assert "style=" not in re.search(r'<div id="content-main".*', page, re.S).group(0)


def test_with_no_replies_each_period_says_so(server, staff):
    with session_client(server.url, staff) as client:
        response = client.get(DASHBOARD)

    assert response.status_code == 200
    for unit in ("hour", "day"):
        section = period(response.text, unit)
        assert "No replies in this period." in section
        assert "<svg" not in section


def test_the_admin_index_links_to_the_dashboard(server, staff):
    with session_client(server.url, staff) as client:
        page = client.get("/admin/").text

    assert f'<a href="{DASHBOARD}">Dashboard</a>' in page


def test_non_staff_are_sent_to_the_admin_sign_in_and_staff_without_the_right_refused(
    server, make_user
):
    visitor = make_user("visitor")
    clerk = make_user("clerk", is_staff=True)  # staff, but not allowed to view messages
    with session_client(server.url, visitor) as client:
        signed_in = client.get(DASHBOARD)
    anonymous = httpx.get(server.url + DASHBOARD)
    with session_client(server.url, clerk) as client:
        refused = client.get(DASHBOARD)
        index = client.get("/admin/").text

    for response in (signed_in, anonymous):
        assert response.status_code == 302
        assert response.headers["location"] == f"/admin/login/?next={DASHBOARD}"
    assert refused.status_code == 403
    assert DASHBOARD not in index
    # A refusal is the client's doing: one log line, no traceback.
    refusal = wait_for(lambda: f"Forbidden (Permission denied): {DASHBOARD}" in server.log())
    assert refusal and "Traceback" not in server.log()


def test_the_dashboard_runs_a_fixed_number_of_queries(make_user, transactional_db):
    # The selector, in this process: the page adds only the admin's own (session, user).
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            reply_dashboard()
        return len(captured)

    reply(make_user("one"), timedelta(hours=1), ttft_ms=10, duration_ms=20, completion_tokens=1)
    few = queries()
    for n in range(12):
        reply(make_user(f"user{n}"), timedelta(days=n % 9, hours=n), ttft_ms=n, duration_ms=50,
              completion_tokens=n + 1, status="error", error_code=f"upstream_{n}")  # fmt: skip

    assert queries() == few
    assert few <= 10  # four a period on PostgreSQL, five elsewhere


def test_the_charts_are_drawn_and_coloured_in_the_browser_under_the_csp(
    server, browser_page_for, staff, replies
):
    page = browser_page_for(staff)
    violations = []
    page.on("console", lambda message: violations.append(message.text))

    response = page.goto(DASHBOARD)

    assert "style-src 'self'" in response.headers["content-security-policy"]
    bar = page.locator("#period-day rect.chart-complete").first
    expect(bar).to_be_visible()
    assert bar.evaluate("rect => getComputedStyle(rect).fill") == "rgb(58, 125, 68)"
    assert bar.bounding_box()["height"] > 10
    assert not [text for text in violations if "Content Security Policy" in text]


def test_percentiles_interpolate_as_postgresql_does():
    assert percentile([], 0.5) is None
    assert percentile([7], 0.95) == 7
    assert percentile([100, 200, 400], 0.95) == pytest.approx(380)
    assert percentile([100, 200, 400, 1000], 0.5) == 300


def test_the_chart_stacks_each_columns_values_up_from_the_baseline():
    chart = stacked_bar_chart(
        [("a", {"ok": 3, "bad": 1}), ("b", {}), ("c", {"bad": 2})],
        series=["ok", "bad"],
        width=344,
        height=130,
    )

    assert nice_ceiling(4) == 4 and nice_ceiling(7) == 10 and nice_ceiling(130) == 200
    first, empty, last = chart.columns
    assert [s.series for s in first.segments] == ["ok", "bad"]
    ok, bad = first.segments
    assert ok.y + ok.height == chart.baseline and bad.y + bad.height == ok.y
    assert ok.height == 3 * bad.height
    assert empty.segments == [] and empty.title == "b: none"
    assert last.title == "c: bad 2"
    assert [tick.label for tick in chart.ticks] == ["0", "1", "2", "3", "4"]
    assert chart.ticks[-1].y == bad.y  # the tallest column reaches the top of the axis
