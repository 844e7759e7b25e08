"""Staff review saved exchanges in the Django admin; nobody else gets in."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection
from django.test import Client as DjangoClient
from django.test.utils import CaptureQueriesContext

from conversations.models import ApiToken, Conversation, Message
from tests.conftest import session_client


@pytest.fixture
def staff(make_user):
    return make_user("staff", is_staff=True, is_superuser=True)


@pytest.fixture
def exchange(make_user):
    """Two conversations: one finished with metrics, one whose last reply failed."""
    alice, bob = make_user("alice"), make_user("bob")
    done = Conversation.objects.create(owner=alice, title="Pasta recipes", model="m1")
    Message.objects.create(conversation=done, role="user", content="How long for spaghetti?")
    Message.objects.create(
        conversation=done, role="assistant", content="About **9 minutes**.", model="m1",
        ttft_ms=120, duration_ms=900, prompt_tokens=30, completion_tokens=12,
        finish_reason="stop",
    )  # fmt: skip
    failed = Conversation.objects.create(owner=bob, title="Weather", model="m2")
    Message.objects.create(conversation=failed, role="user", content="Rain tomorrow?")
    Message.objects.create(
        conversation=failed, role="assistant", content="Part", status="error", model="m2",
        error_code="upstream_error", error_message="The model service failed to answer.",
    )  # fmt: skip
    return done, failed


def rows(page: str) -> list[str]:
    return re.findall(r'<th class="field-title"><a href="[^"]+">([^<]+)</a>', page)


def test_staff_see_conversations_with_counts_tokens_and_last_reply(server, staff, exchange):
    with session_client(server.url, staff) as client:
        page = client.get("/admin/conversations/conversation/").text

    assert sorted(rows(page)) == ["Pasta recipes", "Weather"]
    assert '<td class="field-message_count">2</td>' in page
    assert '<td class="field-total_tokens">42</td>' in page
    assert '<td class="field-last_reply_status">error</td>' in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": "spaghetti"}, ["Pasta recipes"]),
        ({"q": "bob"}, ["Weather"]),
        ({"last_reply_status": "error"}, ["Weather"]),
        ({"last_reply_status": "complete"}, ["Pasta recipes"]),
        ({"model": "m1"}, ["Pasta recipes"]),
    ],
)
def test_staff_search_and_filter_conversations(server, staff, exchange, query, expected):
    with session_client(server.url, staff) as client:
        page = client.get("/admin/conversations/conversation/", params=query).text

    assert rows(page) == expected


def test_searching_message_text_does_not_double_count(server, staff, exchange):
    done, _ = exchange
    Message.objects.create(conversation=done, role="user", content="spaghetti again")

    with session_client(server.url, staff) as client:
        page = client.get("/admin/conversations/conversation/", params={"q": "spaghetti"}).text

    assert rows(page) == ["Pasta recipes"]
    assert '<td class="field-message_count">3</td>' in page
    assert '<td class="field-total_tokens">42</td>' in page


def test_conversation_page_shows_the_whole_transcript_read_only(server, staff, exchange):
    done, _ = exchange

    with session_client(server.url, staff) as client:
        page = client.get(f"/admin/conversations/conversation/{done.pk}/change/").text

    question, answer = page.index("How long for spaghetti?"), page.index("About <strong>9 minutes")
    assert question < answer
    assert '<span class="nowrap">120 ms · 900 ms</span>' in page
    assert '<span class="nowrap">30 → 12</span>' in page
    assert "<textarea" not in page
    assert 'name="messages-0-content"' not in page


def test_message_list_filters_by_role_status_model_and_searches_text(server, staff, exchange):
    with session_client(server.url, staff) as client:
        errors = client.get("/admin/conversations/message/", params={"status__exact": "error"})
        search = client.get("/admin/conversations/message/", params={"q": "rain"})
        users = client.get("/admin/conversations/message/", params={"role__exact": "user"})

    assert "1 message" in errors.text and "Part" in errors.text
    assert "1 message" in search.text
    assert "2 messages" in users.text


def test_non_staff_and_anonymous_users_are_turned_away(server, exchange, make_user):
    visitor = make_user("visitor")
    with session_client(server.url, visitor) as client:
        signed_in = client.get("/admin/conversations/conversation/")
    anonymous = httpx.get(f"{server.url}/admin/conversations/conversation/")

    for response in (signed_in, anonymous):
        assert response.status_code == 302
        assert response.headers["location"].startswith("/admin/login/")


def test_export_action_downloads_every_message_with_its_metrics(server, staff, exchange):
    done, failed = exchange

    with session_client(server.url, staff) as client:
        response = client.post(
            "/admin/conversations/conversation/",
            data={
                "action": "export_json",
                "_selected_action": [done.pk, failed.pk],
                "csrfmiddlewaretoken": client.headers["X-CSRFToken"],
            },
        )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"].startswith("attachment;")
    exported = json.loads(response.content)["conversations"]
    assert [c["title"] for c in exported] == ["Pasta recipes", "Weather"]
    assert exported[0]["owner"] == "alice"
    answer = exported[0]["messages"][1]
    assert {k: answer[k] for k in ("content", "ttft_ms", "duration_ms", "prompt_tokens",
                                   "completion_tokens", "finish_reason", "status")} == {
        "content": "About **9 minutes**.", "ttft_ms": 120, "duration_ms": 900,
        "prompt_tokens": 30, "completion_tokens": 12, "finish_reason": "stop",
        "status": "complete",
    }  # fmt: skip
    assert exported[1]["messages"][1]["error_code"] == "upstream_error"
    assert [m["role"] for m in exported[1]["messages"]] == ["user", "assistant"]


def count_queries(client: DjangoClient, path: str) -> int:
    """The queries an in-process ``GET path`` makes, counted in a thread of its own: a browser
    test earlier in the session leaves Playwright's event loop running in this one, and
    Django's test client cannot run its middlewares' sync hooks under a running loop."""

    def count() -> int:
        try:
            with CaptureQueriesContext(connection) as queries:
                assert client.get(path).status_code == 200
            return len(queries)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(count).result()


def test_admin_lists_use_a_bounded_number_of_queries(staff, make_user, transactional_db):
    client = DjangoClient()
    client.force_login(staff)

    def add(count: int) -> None:
        for index in range(count):
            owner = make_user(f"owner{Conversation.objects.count()}-{index}")
            conversation = Conversation.objects.create(owner=owner, title=f"c{index}")
            for role in ("user", "assistant", "user", "assistant"):
                Message.objects.create(conversation=conversation, role=role, content="x")

    add(3)
    few = [count_queries(client, p) for p in
           ("/admin/conversations/conversation/", "/admin/conversations/message/")]  # fmt: skip
    add(27)
    many = [count_queries(client, p) for p in
            ("/admin/conversations/conversation/", "/admin/conversations/message/")]  # fmt: skip

    assert few == many


def test_staff_create_a_token_in_the_admin_and_it_is_shown_once(server, staff):
    with session_client(server.url, staff) as client:
        response = client.post(
            "/admin/conversations/apitoken/add/",
            data={
                "owner": staff.pk,
                "name": "from admin",
                "csrfmiddlewaretoken": client.headers["X-CSRFToken"],
            },
            follow_redirects=True,
        )
        listing = client.get("/admin/conversations/apitoken/").text

    raw = re.search(r"The new token is (cst_[\w-]+)", response.text).group(1)
    assert raw not in listing
    assert ApiToken.objects.get(name="from admin").owner == staff
    api = httpx.get(f"{server.url}/api/conversations", headers={"Authorization": f"Bearer {raw}"})
    assert api.status_code == 200


def test_the_transcript_reads_like_the_chat_page_with_figures_in_words(server, staff, make_user):
    """Replies rendered (code keeps its indentation, hostile markup stays inert), a user's
    line breaks kept, the time on one line, durations in ms, s or min, unknown tokens as –."""
    owner = make_user("ursula")
    conversation = Conversation.objects.create(owner=owner, title="Code", model="m1")
    Message.objects.create(
        conversation=conversation, role="user", content="first line\n    indented line"
    )
    reply = "Here:\n\n```python\ndef f():\n    return 1\n```\n\n<script>alert(1)</script>"
    Message.objects.create(
        conversation=conversation, role="assistant", content=reply, model="m1",
        ttft_ms=2300, duration_ms=245_000, status="cancelled", error_code="client_left",
        error_message="The client left and no client came back for it.",
    )  # fmt: skip

    with session_client(server.url, staff) as client:
        page = client.get(f"/admin/conversations/conversation/{conversation.pk}/change/").text

    assert '<div class="transcript-plain">first line\n    indented line</div>' in page
    assert "def f():\n    return 1" in page and "<pre><code" in page
    assert "<script>alert(1)</script>" not in page
    assert '<span class="nowrap">2.3 s · 4 min 05 s</span>' in page
    tokens = re.findall(r'<td class="field-tokens">(.*?)</td>', page, re.S)
    assert [re.sub(r"<[^>]+>", "", cell).strip() for cell in tokens] == ["–", "–"]
    assert "Cancelled · client_left" in page
    assert re.search(
        r'<time class="nowrap" datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</time>', page
    )
    assert "conversations/admin" in page and ".css" in page
