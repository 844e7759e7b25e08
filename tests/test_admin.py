"""Staff review saved exchanges in the Django admin; nobody else gets in."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime

import httpx
import pytest
from django.test import Client as DjangoClient

from conversations.models import ApiToken, Conversation, Message
from conversations.tokens import api_token_create
from tests.helpers import count_queries, session_client


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


def text_of(markup: str) -> str:
    """The text of an HTML fragment, its whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", markup)).split())


def table_rows(page: str) -> list[dict[str, str]]:
    """The rows of the page's tables, each as {field: text} for the cells the admin marks
    ``field-<name>`` (a change list's columns, an inline's fields), in the page's order."""
    cell = re.compile(r'<t[hd] class="field-(\w+)[^"]*"[^>]*>(.*?)</t[hd]>', re.S)
    found = []
    for row in re.findall(r"<tr\b[^>]*>(.*?)</tr>", page, re.S):
        cells = {name: text_of(content) for name, content in cell.findall(row)}
        if cells:
            found.append(cells)
    return found


def listed(page: str, *fields: str) -> dict[str, tuple[str, ...]]:
    """A change list's rows by title: the text of ``fields`` in each."""
    return {row["title"]: tuple(row[field] for field in fields) for row in table_rows(page)}


def test_staff_see_conversations_with_counts_tokens_and_last_reply(server, staff, exchange):
    with session_client(server.url, staff) as client:
        page = client.get("/admin/conversations/conversation/").text

    assert listed(page, "owner", "message_count", "total_tokens", "last_reply_status") == {
        "Pasta recipes": ("alice", "2", "42", "complete"),
        "Weather": ("bob", "2", "0", "error"),
    }


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

    assert listed(page, "message_count", "total_tokens") == {"Pasta recipes": ("3", "42")}


def test_conversation_page_shows_the_whole_transcript_read_only(server, staff, exchange):
    done, _ = exchange

    with session_client(server.url, staff) as client:
        page = client.get(f"/admin/conversations/conversation/{done.pk}/change/").text

    transcript = [
        (row["role"], row["text"], row["timing"], row["tokens"])
        for row in table_rows(page)
        if "role" in row
    ]
    assert transcript == [
        ("User", "How long for spaghetti?", "–", "–"),
        ("Assistant", "About 9 minutes.", "120 ms · 900 ms", "30 → 12"),
    ]
    assert "About <strong>9 minutes</strong>" in page
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


def test_staff_revoke_tokens_in_the_admin_and_they_stop_working_at_once(server, staff, make_user):
    owner = make_user("alice")
    live, raw = api_token_create(owner=owner, name="live")
    earlier, _ = api_token_create(owner=owner, name="revoked earlier")
    revoked_at = datetime(2026, 1, 1, tzinfo=UTC)
    ApiToken.objects.filter(pk=earlier.pk).update(revoked_at=revoked_at)
    bearer = {"Authorization": f"Bearer {raw}"}
    assert httpx.get(f"{server.url}/api/conversations", headers=bearer).status_code == 200

    with session_client(server.url, staff) as client:
        response = client.post(
            "/admin/conversations/apitoken/",
            data={
                "action": "revoke",
                "_selected_action": [live.pk, earlier.pk],
                "csrfmiddlewaretoken": client.headers["X-CSRFToken"],
            },
            follow_redirects=True,
        )

    assert "1 token(s) revoked." in response.text
    assert ApiToken.objects.get(pk=live.pk).revoked_at is not None
    assert ApiToken.objects.get(pk=earlier.pk).revoked_at == revoked_at
    assert httpx.get(f"{server.url}/api/conversations", headers=bearer).status_code == 401


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
