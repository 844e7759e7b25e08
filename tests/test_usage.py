"""Token usage per user, model and day, GET /api/usage, the admin's usage page, and the daily
token quota, through running servers with the real SDK against the fake upstream."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from django.conf import settings
from django.db.models import F
from django.test import Client as DjangoClient

from conversations import statements, usage
from conversations.models import Conversation, Message, UsageDay, UserQuota
from conversations.services import message_finalize, message_rows
from conversations.tokens import api_token_create
from conversations.usage import ReplyUsage, quota_acheck
from tests.helpers import count_queries, session_client
from tests.loops import run_in_new_loop

SITE_QUOTA = 100


@pytest.fixture(scope="module")
def quota_server(start_server, fake_upstream):
    """A site with a daily quota of SITE_QUOTA tokens; no title requests, so every upstream
    request is a reply's."""
    return start_server(
        "quota",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_DAILY_TOKEN_QUOTA=str(SITE_QUOTA),
        CHAT_AUTO_TITLES="0",
    )


@pytest.fixture
def staff(make_user):
    return make_user("staff", is_staff=True, is_superuser=True)


def today() -> date:
    return datetime.now(UTC).date()


def next_midnight() -> str:
    return f"{(today() + timedelta(days=1)).isoformat()}T00:00:00Z"


def reply(client: httpx.Client, message: str, **fields) -> httpx.Response:
    """POST a message and read the whole stream: the reply is saved (and counted) before its
    last frame is sent."""
    response = client.post("/api/chat/stream", json={"message": message, **fields})
    if response.status_code == 200:
        assert '"status": "complete"' in response.text, response.text
    return response


def streamed(fake_upstream, trigger: str) -> list:
    """The replies' requests the upstream received for ``trigger`` (not title requests)."""
    return [request for request in fake_upstream.requests_for(trigger) if request.streaming]


def usage_of(user) -> list[tuple]:
    return list(
        UsageDay.objects.filter(user=user)
        .order_by("day", "model")
        .values_list(
            "day", "model", "prompt_tokens", "completion_tokens", "replies",
            "estimated_replies", "estimated_tokens",
        )
    )  # fmt: skip


def test_usage_is_the_upstreams_reported_count_added_up_per_user_model_and_day(
    server, client, user, fake_upstream
):
    fake_upstream.script("counted reply one", usage=(120, 30))
    fake_upstream.script("counted reply two", usage=(5, 2))

    first = reply(client, "counted reply one")
    second = reply(
        client, "counted reply two", conversation_id=int(first.headers["x-conversation-id"])
    )

    assert second.status_code == 200
    assert usage_of(user) == [(today(), "fake-model", 125, 32, 2, 0, 0)]
    replies = Message.objects.filter(role="assistant").order_by("id")
    assert [(m.prompt_tokens, m.completion_tokens) for m in replies] == [(120, 30), (5, 2)]


def test_usage_the_upstream_does_not_report_is_estimated_and_marked(
    server, client, user, fake_upstream
):
    fake_upstream.script("not counted upstream", tokens=["Hel", "lo", " there"], usage=None)

    response = reply(client, "not counted upstream")

    [upstream] = streamed(fake_upstream, "not counted upstream")
    prompt_chars = sum(len(m["content"]) for m in upstream.body["messages"])
    assert prompt_chars == len(settings.CHAT_SYSTEM_PROMPT) + len("not counted upstream")
    prompt, completion = math.ceil(prompt_chars / 4), 3  # characters / 4; one token per delta
    assert usage_of(user) == [
        (today(), "fake-model", prompt, completion, 1, 1, prompt + completion)
    ]
    saved = Message.objects.get(pk=response.headers["x-message-id"])
    assert (saved.prompt_tokens, saved.completion_tokens) == (None, None)
    today_usage = client.get("/api/usage").json()["today"]
    assert (today_usage["total_tokens"], today_usage["estimated_tokens"]) == (
        prompt + completion,
        prompt + completion,
    )


def test_a_reply_saved_twice_is_counted_once(user, transactional_db):
    """The usage is added in the statement that closes the reply, only if it closed it."""
    conversation = Conversation.objects.create(owner=user, model="m")
    rows = message_rows([], "hi", "m", datetime.now(UTC))
    *_, assistant = statements.insert_chain(
        Message, [{"conversation": conversation, **row} for row in rows], chain="parent", first=None
    )
    counted = ReplyUsage(prompt_tokens=10, completion_tokens=4)
    save = {
        "message_id": assistant.pk, "status": "complete",
        "content": "ok", "user_id": user.pk, "model": "m", "usage": counted,
    }  # fmt: skip

    assert message_finalize(**save) is True
    assert message_finalize(**save) is False
    assert usage_of(user) == [(today(), "m", 10, 4, 1, 0, 0)]


def test_api_usage_gives_the_callers_own_usage_per_day_and_model_and_nobody_elses(
    server, client_for, make_user, fake_upstream
):
    alice, bob = make_user("alice"), make_user("bob")
    fake_upstream.script("alice's usage", usage=(40, 2))
    assert reply(client_for(alice), "alice's usage").status_code == 200
    UsageDay.objects.create(user=bob, day=today(), model="other", prompt_tokens=7, replies=1)
    UsageDay.objects.create(
        user=bob, day=today() - timedelta(days=2), model="other", prompt_tokens=900,
        completion_tokens=100, replies=3, estimated_replies=1, estimated_tokens=50,
    )  # fmt: skip
    _, bobs_token = api_token_create(owner=bob)

    mine = client_for(alice).get("/api/usage", params={"user": bob.pk}).json()
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {bobs_token}"}
    ) as bearer:
        bobs = bearer.get("/api/usage", params={"days": 3}).json()
        too_many = bearer.get("/api/usage", params={"days": 91})
    anonymous = httpx.get(f"{server.url}/api/usage")

    assert mine["today"] == {
        "day": today().isoformat(), "prompt_tokens": 40, "completion_tokens": 2,
        "total_tokens": 42, "replies": 1, "estimated_tokens": 0,
        "models": [{"model": "fake-model", "prompt_tokens": 40, "completion_tokens": 2,
                    "total_tokens": 42, "replies": 1, "estimated_tokens": 0}],
    }  # fmt: skip
    assert len(mine["days"]) == 7 and mine["days"][0] == mine["today"]
    assert all(day["total_tokens"] == 0 for day in mine["days"][1:])
    assert mine["quota"] == {
        "daily_tokens": None, "source": None, "used": 42, "remaining": None,
        "exceeded": False, "resets_at": next_midnight(),
    }  # fmt: skip
    assert [day["day"] for day in bobs["days"]] == [
        (today() - timedelta(days=n)).isoformat() for n in range(3)
    ]
    assert [day["total_tokens"] for day in bobs["days"]] == [7, 0, 1000]
    assert bobs["days"][2]["estimated_tokens"] == 50
    assert [m["model"] for m in bobs["today"]["models"]] == ["other"]
    assert too_many.status_code == 400
    assert anonymous.status_code == 401


def test_at_the_quota_the_next_reply_is_refused_before_the_upstream_and_resets_next_day(
    quota_server, make_user, fake_upstream
):
    carol = make_user("carol")
    fake_upstream.script("within the quota", usage=(80, 30))
    with session_client(quota_server.url, carol) as client:
        first = reply(client, "within the quota")
        conversation_id = int(first.headers["x-conversation-id"])
        refused = reply(client, "over the quota")
        refused_get = client.get("/api/chat/stream", params={"message": "over the quota"})
        refused_in_conversation = reply(client, "over the quota", conversation_id=conversation_id)
        standing = client.get("/api/usage").json()["quota"]

        assert first.status_code == 200
        for response in (refused, refused_get, refused_in_conversation):
            assert response.status_code == 429
            assert response.headers["content-type"] == "application/json"
            error = response.json()["error"]
            assert error["code"] == "quota_exceeded"
            assert (error["quota"], error["used"], error["resets_at"]) == (
                SITE_QUOTA,
                110,
                next_midnight(),
            )
            assert "110 tokens today" in error["message"] and "midnight UTC" in error["message"]
            seconds_left = (
                datetime.fromisoformat(next_midnight()) - datetime.now(UTC)
            ).total_seconds()
            assert abs(int(response.headers["retry-after"]) - seconds_left) < 30
        assert fake_upstream.requests_for("over the quota") == []  # nor a title request
        assert Message.objects.filter(conversation__owner=carol).count() == 2
        assert Conversation.objects.filter(owner=carol).count() == 1
        assert standing == {
            "daily_tokens": SITE_QUOTA, "source": "site", "used": 110, "remaining": 0,
            "exceeded": True, "resets_at": next_midnight(),
        }  # fmt: skip

        # The next day: yesterday's usage no longer counts.
        UsageDay.objects.filter(user=carol).update(day=F("day") - timedelta(days=1))
        next_day = reply(client, "over the quota", conversation_id=conversation_id)

    assert next_day.status_code == 200
    assert len(streamed(fake_upstream, "over the quota")) == 1
    assert [row[0] for row in usage_of(carol)] == [today() - timedelta(days=1), today()]


def test_a_users_own_quota_replaces_the_sites(quota_server, make_user, fake_upstream):
    more, unlimited, less = make_user("more"), make_user("unlimited"), make_user("less")
    for user, own, used in ((more, 1000, 500), (unlimited, 0, 5000), (less, 10, 20)):
        UserQuota.objects.create(user=user, daily_tokens=own)
        UsageDay.objects.create(user=user, day=today(), model="fake-model", prompt_tokens=used)

    answers = {}
    for user in (more, unlimited, less):
        with session_client(quota_server.url, user) as client:
            answers[user.username] = reply(client, f"own quota of {user.username}")

    assert answers["more"].status_code == 200
    assert answers["unlimited"].status_code == 200
    assert answers["less"].status_code == 429
    assert answers["less"].json()["error"]["quota"] == 10
    assert fake_upstream.requests_for("own quota of less") == []


def test_a_quota_set_in_the_admin_applies_at_once_without_a_site_quota(
    server, staff, user, fake_upstream
):
    """No CHAT_DAILY_TOKEN_QUOTA: the server knows which users have a quota of their own; one
    saved in its admin counts from the next request, and deleting it lifts it."""
    fake_upstream.script("before my own quota", usage=(15, 10))
    with session_client(server.url, user) as client, session_client(server.url, staff) as admin:
        assert reply(client, "before my own quota").status_code == 200
        added = admin.post(
            "/admin/conversations/userquota/add/",
            data={
                "user": user.pk,
                "daily_tokens": 20,
                "csrfmiddlewaretoken": admin.headers["X-CSRFToken"],
            },
        )
        refused = reply(client, "after my own quota")
        quota = UserQuota.objects.get(user=user)
        deleted = admin.post(
            f"/admin/conversations/userquota/{quota.pk}/delete/",
            data={"post": "yes", "csrfmiddlewaretoken": admin.headers["X-CSRFToken"]},
        )
        lifted = reply(client, "after my own quota")

    assert added.status_code == 302
    assert refused.status_code == 429
    assert (refused.json()["error"]["quota"], refused.json()["error"]["used"]) == (20, 25)
    assert deleted.status_code == 302 and not UserQuota.objects.exists()
    assert lifted.status_code == 200
    assert len(streamed(fake_upstream, "after my own quota")) == 1


def test_staff_see_usage_per_user_model_and_day_with_totals(server, staff, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    UsageDay.objects.create(
        user=alice, day=today(), model="m1", prompt_tokens=100, completion_tokens=20, replies=2
    )
    UsageDay.objects.create(
        user=bob, day=today() - timedelta(days=1), model="m2", prompt_tokens=5,
        completion_tokens=1, replies=1, estimated_replies=1, estimated_tokens=6,
    )  # fmt: skip
    UserQuota.objects.create(user=bob, daily_tokens=5000)

    with session_client(server.url, staff) as client:
        listing = client.get("/admin/conversations/usageday/").text
        alices = client.get("/admin/conversations/usageday/", params={"user__id__exact": alice.pk})
        by_day = client.get(
            "/admin/conversations/usageday/",
            params={"day__year": today().year, "day__month": today().month},
        )
        quotas = client.get("/admin/conversations/userquota/").text
        bobs_page = client.get(f"/admin/auth/user/{bob.pk}/change/").text
    with session_client(server.url, alice) as client:
        not_staff = client.get("/admin/conversations/usageday/")

    users = re.findall(r'<td class="field-user[^"]*">([^<]+)</td>', listing)
    assert sorted(users) == ["alice", "bob"]
    assert '<td class="field-total_tokens">120</td>' in listing
    assert '<td class="field-estimated_tokens">6</td>' in listing
    assert "add up to <strong>126</strong> tokens" in listing
    assert "in 3 replies" in listing and "6 of the tokens are estimates" in listing
    assert "add up to <strong>120</strong> tokens" in alices.text
    assert by_day.status_code == 200
    assert "5000" in quotas and "bob" in quotas
    assert 'name="token_quota-0-daily_tokens"' in bobs_page and 'value="5000"' in bobs_page
    assert not_staff.status_code == 302 and "/admin/login/" in not_staff.headers["location"]


def test_the_quota_check_costs_no_query_without_a_quota_and_one_read_with_one(
    make_user, monkeypatch, settings
):
    """The check before every reply: the users with an override are read once (then kept),
    a user without one and no site quota costs nothing more; with a quota, one read."""
    plain, limited = make_user("plain"), make_user("limited")
    UserQuota.objects.create(user=limited, daily_tokens=1000)
    calls = {"loads": 0, "reads": 0}

    def counted(name: str, function):
        async def call(*args):
            calls[name] += 1
            return await function(*args)

        return call

    monkeypatch.setattr(usage, "_aoverride_user_ids", counted("loads", usage._aoverride_user_ids))
    monkeypatch.setattr(usage, "_aoverride_and_used", counted("reads", usage._aoverride_and_used))
    settings.CHAT_DAILY_TOKEN_QUOTA = 0
    usage.quota_overrides.cache_clear()

    async def check(user, times: int) -> dict:
        for _ in range(times):
            await quota_acheck(user=user)
        return dict(calls)

    try:
        assert run_in_new_loop(check(plain, 3)) == {"loads": 1, "reads": 0}
        assert run_in_new_loop(check(plain, 3)) == {"loads": 1, "reads": 0}
        assert run_in_new_loop(check(limited, 2)) == {"loads": 1, "reads": 2}
        settings.CHAT_DAILY_TOKEN_QUOTA = 50
        assert run_in_new_loop(check(plain, 2)) == {"loads": 1, "reads": 4}
    finally:
        usage.quota_overrides.cache_clear()


def test_the_usage_list_runs_a_fixed_number_of_queries(staff, make_user):
    client = DjangoClient()
    client.force_login(staff)

    def add(count: int) -> None:
        for index in range(count):
            owner = make_user(f"user{UsageDay.objects.count()}-{index}")
            for model in ("m1", "m2"):
                UsageDay.objects.create(user=owner, day=today(), model=model, prompt_tokens=1)

    add(2)
    few = count_queries(client, "/admin/conversations/usageday/")
    add(20)
    many = count_queries(client, "/admin/conversations/usageday/")

    assert few == many
