"""Managing conversations: rename, delete, search and titles, through the running server."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from conversations.models import Conversation, Message
from conversations.providers.base import TITLE_INSTRUCTION, clean_title
from conversations.providers.demo import DemoProvider
from conversations.selectors import (
    conversation_date_groups,
    conversation_search_for_user,
    search_terms,
)
from conversations.services import conversation_set_generated_title, conversation_title_from
from tests.helpers import (
    answered,
    asked,
    create_token,
    reply_streaming_in,
    session_client,
    token_client,
    transcript_create,
    wait_for,
)
from tests.loops import run_in_new_loop

# -- titles as they are first made ---------------------------------------------------------------


def test_a_provisional_title_is_the_first_words_cut_at_a_word_boundary():
    long = "Could you explain how the garbage collector of CPython handles reference cycles please"

    assert conversation_title_from("  Short   question\n") == "Short question"
    assert (
        conversation_title_from(long) == "Could you explain how the garbage collector of CPython…"
    )
    assert conversation_title_from("a" * 100) == "a" * 59 + "…"
    # The comma before the cut goes too.
    listing = "Lists, tuples, sets, dicts, strings, bytes, arrays, queues, deques"
    assert conversation_title_from(listing) == "Lists, tuples, sets, dicts, strings, bytes, arrays…"


def test_a_new_conversation_gets_the_provisional_title(server, client, fake_upstream):
    text = "Please compare the memory models of Rust, Go and Java for a team new to systems work"

    response = client.post("/api/chat/stream", json={"message": text})

    conversation = Conversation.objects.get(pk=response.headers["x-conversation-id"])
    assert conversation.title == "Please compare the memory models of Rust, Go and Java for…"


# -- rename -------------------------------------------------------------------------------------


def test_owner_renames_a_conversation_without_moving_it_up_the_list(server, client, user):
    older = Conversation.objects.create(owner=user, title="old name")
    newer = Conversation.objects.create(owner=user, title="newer")
    before = Conversation.objects.get(pk=older.pk).updated_at

    response = client.patch(f"/api/conversations/{older.pk}", json={"title": "  Trip to\nKyoto  "})

    assert response.status_code == 200
    assert response.json()["title"] == "Trip to Kyoto"
    assert response.json()["id"] == older.pk
    saved = Conversation.objects.get(pk=older.pk)
    assert saved.title == "Trip to Kyoto"
    assert saved.updated_at == before
    listed = client.get("/api/conversations").json()["results"]
    assert [c["id"] for c in listed] == [newer.pk, older.pk]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "missing_title"),
        ({"title": "   \n "}, "missing_title"),
        ({"title": None}, "missing_title"),
        ({"title": 42}, "invalid_request"),
        ({"title": "x" * 201}, "title_too_long"),
        ({"title": "nul\u0000byte"}, "invalid_text"),
        (["title"], "invalid_request"),
    ],
)
def test_a_rename_refuses_a_missing_blank_too_long_or_unstorable_title(
    server, client, user, body, code
):
    conversation = Conversation.objects.create(owner=user, title="unchanged")

    response = client.patch(f"/api/conversations/{conversation.pk}", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert Conversation.objects.get(pk=conversation.pk).title == "unchanged"


def test_a_title_of_200_characters_is_accepted(server, client, user):
    conversation = Conversation.objects.create(owner=user, title="short")

    response = client.patch(f"/api/conversations/{conversation.pk}", json={"title": "y" * 200})

    assert response.status_code == 200
    assert Conversation.objects.get(pk=conversation.pk).title == "y" * 200


def test_nobody_else_can_rename_a_conversation(server, client_for, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    conversation = Conversation.objects.create(owner=alice, title="alice's")

    response = client_for(bob).patch(
        f"/api/conversations/{conversation.pk}", json={"title": "bob's now"}
    )
    unknown = client_for(bob).patch("/api/conversations/987654321", json={"title": "x"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "conversation_not_found"
    assert unknown.status_code == 404
    assert Conversation.objects.get(pk=conversation.pk).title == "alice's"


def test_a_session_rename_needs_csrf_and_a_token_does_not(server, client, user):
    conversation = Conversation.objects.create(owner=user, title="keep me")

    forged = client.patch(
        f"/api/conversations/{conversation.pk}",
        json={"title": "forged"},
        headers={"X-CSRFToken": "x" * 32},
    )
    assert forged.status_code == 403
    assert Conversation.objects.get(pk=conversation.pk).title == "keep me"

    with token_client(server, create_token("alice")) as api:
        renamed = api.patch(f"/api/conversations/{conversation.pk}", json={"title": "by token"})
    assert renamed.status_code == 200
    assert Conversation.objects.get(pk=conversation.pk).title == "by token"


def test_a_rename_must_be_json(server, client, user):
    conversation = Conversation.objects.create(owner=user, title="same")

    response = client.patch(
        f"/api/conversations/{conversation.pk}",
        content=b"title=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 415
    assert Conversation.objects.get(pk=conversation.pk).title == "same"


# -- delete -------------------------------------------------------------------------------------


def test_deleting_a_conversation_whose_reply_streams_stops_the_reply(server, user, fake_upstream):
    token = create_token("alice")
    stream = reply_streaming_in(server, fake_upstream, token, "delete while streaming")
    conversation_id = int(stream.response.headers["x-conversation-id"])

    with token_client(server, token) as api:
        deleted = api.delete(f"/api/conversations/{conversation_id}")
    stream.finish()

    assert deleted.status_code == 204
    assert wait_for(lambda: fake_upstream.requests_for("delete while streaming")[-1].aborted)
    assert not Conversation.objects.filter(pk=conversation_id).exists()
    assert not Message.objects.filter(conversation_id=conversation_id).exists()


# -- search -------------------------------------------------------------------------------------


def conversation_with(owner, title: str, *texts: str) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title=title)
    transcript_create(
        conversation,
        *(asked(text) if i % 2 == 0 else answered(text) for i, text in enumerate(texts)),
    )
    return conversation


def search(client, q: str, **params) -> dict:
    response = client.get("/api/conversations", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return response.json()


def test_search_finds_the_callers_conversations_by_title_or_message_text(
    server, client, user, make_user
):
    mallory = make_user("mallory")
    by_title = conversation_with(user, "Kyoto itinerary", "where to stay")
    by_message = conversation_with(
        user, "Travel", "Which temples in Kyoto open early?", "Kiyomizu-dera opens at six."
    )
    conversation_with(user, "Recipes", "how long to boil an egg")
    conversation_with(mallory, "Kyoto for mallory", "Kyoto again")

    found = search(client, "kyoto")

    assert {c["id"] for c in found["results"]} == {by_title.pk, by_message.pk}
    assert found["total"] == 2 and found["has_next"] is False
    snippets = {c["id"]: c["snippet"] for c in found["results"]}
    assert snippets[by_message.pk] == "Which temples in Kyoto open early?"
    assert snippets[by_title.pk] is None


def test_search_matches_word_prefixes_every_word_and_any_language(server, client, user):
    both = conversation_with(user, "Notes", "Grüße aus München, with photographs")
    one_word = conversation_with(user, "Other", "photographs of the sea")
    conversation_with(user, "Unrelated", "nothing to see")

    assert {c["id"] for c in search(client, "PHOTO")["results"]} == {both.pk, one_word.pk}
    assert [c["id"] for c in search(client, "photo grü")["results"]] == [both.pk]
    assert [c["id"] for c in search(client, "münch")["results"]] == [both.pk]
    assert search(client, "photo zebra")["results"] == []
    assert search(client, "!!! ???")["results"] == []


def test_search_results_are_paginated_newest_first(server, client, user):
    made = [conversation_with(user, f"lesson {index}", "piano practice") for index in range(5)]

    first = search(client, "piano", page_size=2)
    third = search(client, "piano", page_size=2, page=3)

    assert [c["id"] for c in first["results"]] == [made[4].pk, made[3].pk]
    assert first["total"] == 5 and first["has_next"] is True
    assert [c["id"] for c in third["results"]] == [made[0].pk]
    assert third["has_next"] is False


def test_a_snippet_is_a_short_piece_around_the_match(server, client, user):
    text = (
        " ".join(f"filler{index}" for index in range(200)) + " the needle is here " + "tail " * 100
    )
    conversation_with(user, "Long one", text)

    [result] = search(client, "needle")["results"]

    assert "the needle is here" in result["snippet"]
    assert result["snippet"].startswith("…") and result["snippet"].endswith("…")
    assert len(result["snippet"]) <= 125


def test_a_blank_search_is_the_whole_list_and_a_long_one_is_refused(server, client, user):
    conversation_with(user, "one")
    conversation_with(user, "two")

    assert search(client, "   ")["total"] == 2
    too_long = client.get("/api/conversations", params={"q": "x" * 201})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "q_too_long"
    unstorable = client.get("/api/conversations", params={"q": "a\u0000b"})
    assert unstorable.status_code == 400
    assert unstorable.json()["error"]["code"] == "invalid_text"


def search_plan(query) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            sql, params = query.query.sql_with_params()
            cursor.execute("EXPLAIN " + sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")


def test_search_runs_on_the_full_text_indexes(transactional_db, make_user):
    """For a user with many conversations the planner searches the text indexes (with few,
    it rightly reads the user's own rows instead)."""
    user = make_user("alice")
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=user, title=f"chat {index}") for index in range(400)
    )
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user", content=f"note {index} about {word}")
        for conversation in conversations
        for index, word in enumerate(["cats", "dogs", "ships", "stars"])
    )
    conversation_with(user, "Kyoto itinerary", "temples in Kyoto")
    query = conversation_search_for_user(user, search_terms("kyo temp"))
    assert [c.title for c in query] == ["Kyoto itinerary"]

    if connection.vendor != "postgresql":
        # SQLite has no text search index: the fallback is a case-insensitive LIKE.
        assert "LIKE" in str(query.query)
        return
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE conversations_conversation, conversations_message")
    plan = search_plan(query)
    assert "message_content_search" in plan, plan
    assert "conversation_title_search" in plan, plan


# -- date groups --------------------------------------------------------------------------------


def test_the_sidebar_groups_conversations_by_last_activity_day():
    today = dt.date(2026, 11, 28)

    def at(days_ago: int, hour: int = 12) -> Conversation:
        moment = dt.datetime(2026, 11, 28, hour, tzinfo=dt.UTC) - dt.timedelta(days=days_ago)
        return Conversation(title=f"{days_ago}d", updated_at=moment)

    conversations = [at(0, 0), at(1, 23), at(1, 0), at(2), at(7), at(8), at(400)]

    groups = conversation_date_groups(conversations, today=today)

    assert [(label, [c.title for c in items]) for label, items in groups] == [
        ("Today", ["0d"]),
        ("Yesterday", ["1d", "1d"]),
        ("Previous 7 days", ["2d", "7d"]),
        ("Older", ["8d", "400d"]),
    ]
    assert conversation_date_groups([], today=today) == []


# -- titles from the model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def titling_server(start_server, fake_upstream):
    """The site with CHAT_AUTO_TITLES on (the other tests' servers have it off)."""
    return start_server(
        "titles",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_AUTO_TITLES="1",
        CHAT_TITLE_TIMEOUT_SECONDS="3",
    )


@pytest.fixture
def titles_client(titling_server, transactional_db, user):
    with session_client(titling_server.url, user) as client:
        yield client


def title_requests(fake_upstream, trigger: str) -> list:
    return [r for r in fake_upstream.requests_for(trigger) if not r.streaming]


def test_the_model_names_a_new_conversation_after_its_first_reply(titles_client, fake_upstream):
    trigger = "I want to plan two weeks in Japan next spring, mostly trains and temples"
    fake_upstream.script(
        trigger, tokens=["Sure", ", here", " is a plan."], completion='"Japan Rail Trip."'
    )

    response = titles_client.post("/api/chat/stream", json={"message": trigger})
    conversation_id = int(response.headers["x-conversation-id"])

    assert wait_for(lambda: Conversation.objects.get(pk=conversation_id).title == "Japan Rail Trip")
    [request] = title_requests(fake_upstream, trigger)
    assert request.body["stream"] is False
    assert request.body["messages"][0] == {"role": "system", "content": TITLE_INSTRUCTION}
    assert request.body["messages"][-1] == {"role": "user", "content": trigger}
    assert request.body["model"] == "fake-model"
    reply = Message.objects.get(conversation_id=conversation_id, role="assistant")
    assert (reply.status, reply.content) == ("complete", "Sure, here is a plan.")
    detail = titles_client.get(f"/api/conversations/{conversation_id}").json()
    assert detail["title"] == "Japan Rail Trip"

    # Once per conversation: a second reply asks for no title.
    titles_client.post(
        "/api/chat/stream", json={"message": trigger, "conversation_id": conversation_id}
    )
    assert len(fake_upstream.requests_for(trigger)) == 3
    assert len(title_requests(fake_upstream, trigger)) == 1


def test_a_failed_title_request_leaves_the_provisional_title_and_the_reply_whole(
    titles_client, fake_upstream, titling_server
):
    trigger = "Explain the difference between a mutex and a semaphore with a short example"
    fake_upstream.script(trigger, tokens=["A mutex", " is owned;", " a semaphore counts."],
                         completion_status=500)  # fmt: skip

    response = titles_client.post("/api/chat/stream", json={"message": trigger})
    conversation_id = int(response.headers["x-conversation-id"])

    request = wait_for(lambda: title_requests(fake_upstream, trigger))[-1]
    wait_for(lambda: request.finished_at)
    assert wait_for(lambda: "no title (upstream_error)" in titling_server.log())
    conversation = Conversation.objects.get(pk=conversation_id)
    assert conversation.title == "Explain the difference between a mutex and a semaphore…"
    reply = Message.objects.get(conversation_id=conversation_id, role="assistant")
    assert reply.status == "complete"
    assert reply.content == "A mutex is owned; a semaphore counts."
    assert response.text.rstrip().endswith('"status": "complete"}')


def test_a_title_that_takes_too_long_is_given_up(titles_client, fake_upstream, titling_server):
    trigger = "What is a good name for a grey cat who likes boxes"
    fake_upstream.script(trigger, tokens=["Whiskers."], completion="Late", completion_delay=10)

    response = titles_client.post("/api/chat/stream", json={"message": trigger})
    conversation_id = int(response.headers["x-conversation-id"])

    assert wait_for(lambda: "no title within 3.0 s" in titling_server.log(), timeout=10)
    assert Conversation.objects.get(pk=conversation_id).title == trigger
    assert Message.objects.get(conversation_id=conversation_id, role="assistant").status == (
        "complete"
    )


def test_no_title_is_asked_for_when_auto_titles_are_off(server, client, fake_upstream):
    trigger = "titles are off on the shared test server"

    response = client.post("/api/chat/stream", json={"message": trigger})

    assert response.status_code == 200
    assert title_requests(fake_upstream, trigger) == []
    assert Conversation.objects.get().title == trigger


def test_a_generated_title_never_replaces_one_the_owner_gave(transactional_db, user):
    conversation = Conversation.objects.create(owner=user, title="first words…")

    assert conversation_set_generated_title(
        conversation_id=conversation.pk, provisional="first words…", title="Model Title"
    )
    assert Conversation.objects.get(pk=conversation.pk).title == "Model Title"

    Conversation.objects.filter(pk=conversation.pk).update(title="Mine")
    assert not conversation_set_generated_title(
        conversation_id=conversation.pk, provisional="first words…", title="Another"
    )
    assert Conversation.objects.get(pk=conversation.pk).title == "Mine"


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"Japan Rail Trip."', "Japan Rail Trip"),
        ("Title: **Sourdough Basics**", "Sourdough Basics"),
        ("\n  « Voyage à Kyoto »\n\nThis title sums up the question.", "Voyage à Kyoto"),
        ("   ", ""),
    ],
)
def test_a_models_title_is_cleaned_to_one_plain_line(answer, title):
    assert clean_title(answer) == title


def test_the_demo_model_gives_a_fixed_title():
    title = run_in_new_loop(DemoProvider(tokens_per_second=0).title("anything", timeout=1))

    assert title == "Demo conversation"
