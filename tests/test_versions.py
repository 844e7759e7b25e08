"""Regenerate and edit keep every version: a message has a parent, siblings are versions, the
conversation shows one path, and the prompt sent upstream is the shown path.

Through the running site with the real openai SDK against the fake upstream, and in Chromium.
"""

from __future__ import annotations

import uuid

import pytest

from conversations.models import Conversation, Message
from tests.helpers import wait_for_status


def unique(text: str) -> str:
    """A trigger no other test scripts (the fake upstream is shared by the session)."""
    return f"{text} {uuid.uuid4().hex[:8]}"


def chat(client, **payload) -> tuple[int, Message]:
    """Send one request to the POST stream; the conversation and the reply, once saved."""
    response = client.post("/api/chat/stream", json=payload)
    assert response.status_code == 200, response.text
    reply = wait_for_status(int(response.headers["x-message-id"]))
    return int(response.headers["x-conversation-id"]), reply


def sent_turns(fake_upstream, trigger: str) -> list[tuple[str, str]]:
    """The user and assistant turns of the last streaming prompt for ``trigger``."""
    requests = [r for r in fake_upstream.requests_for(trigger) if r.streaming]
    assert requests, f"the upstream received no prompt ending with {trigger!r}"
    messages = requests[-1].body["messages"]
    return [(m["role"], m["content"]) for m in messages if m["role"] != "system"]


def detail(client, conversation_id: int) -> dict:
    response = client.get(f"/api/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


def shown_texts(body: dict) -> list[str]:
    by_id = {m["id"]: m for m in body["messages"]}
    return [by_id[pk]["content"] for pk in body["current_path"]]


def test_regenerate_keeps_the_first_reply_as_a_version_and_sends_the_shown_path(
    client, fake_upstream
):
    question = unique("regenerate me")
    fake_upstream.script(question, tokens=["First", " answer"])
    conversation_id, first = chat(client, message=question)
    fake_upstream.script(question, tokens=["Second", " answer"])

    _, second = chat(client, conversation_id=conversation_id, regenerate_of=first.pk)

    assert second.status == "complete" and second.content == "Second answer"
    assert second.parent_id == first.parent_id is not None
    assert Message.objects.get(pk=first.pk).content == "First answer"  # kept, not replaced
    # The second prompt is the question alone: the first answer is a sibling, not history.
    assert sent_turns(fake_upstream, question) == [("user", question)]
    body = detail(client, conversation_id)
    assert shown_texts(body) == [question, "Second answer"]
    parents = {m["id"]: m["parent_id"] for m in body["messages"]}
    assert parents[first.pk] == parents[second.pk] == first.parent_id
    assert len(body["messages"]) == 3


def test_edit_makes_a_new_version_of_the_message_and_the_prompt_leaves_the_old_branch(
    client, fake_upstream
):
    first_q, second_q, edited_q = unique("one"), unique("two"), unique("two, edited")
    fake_upstream.script(first_q, tokens=["A1"])
    fake_upstream.script(second_q, tokens=["A2"])
    fake_upstream.script(edited_q, tokens=["A2 edited"])
    conversation_id, a1 = chat(client, message=first_q)
    _, a2 = chat(client, conversation_id=conversation_id, message=second_q)
    old_question = a2.parent_id

    _, edited_reply = chat(
        client, conversation_id=conversation_id, edit_of=old_question, message=edited_q
    )

    new_question = Message.objects.get(pk=edited_reply.parent_id)
    assert new_question.content == edited_q and new_question.parent_id == a1.pk
    assert sent_turns(fake_upstream, edited_q) == [
        ("user", first_q),
        ("assistant", "A1"),
        ("user", edited_q),
    ]
    body = detail(client, conversation_id)
    assert shown_texts(body) == [first_q, "A1", edited_q, "A2 edited"]
    assert {m["content"] for m in body["messages"]} >= {second_q, "A2"}  # the old branch kept


def test_showing_an_older_version_makes_it_the_path_the_next_message_follows(client, fake_upstream):
    first_q, edited_q, next_q = unique("start"), unique("start, edited"), unique("go on")
    fake_upstream.script(first_q, tokens=["Old"])
    fake_upstream.script(edited_q, tokens=["New"])
    fake_upstream.script(next_q, tokens=["Next"])
    conversation_id, old_reply = chat(client, message=first_q)
    chat(client, conversation_id=conversation_id, edit_of=old_reply.parent_id, message=edited_q)

    shown = client.post(f"/api/messages/{old_reply.parent_id}/show")

    assert shown.status_code == 200, shown.text
    assert shown.json() == {
        "conversation_id": conversation_id,
        "current_path": [old_reply.parent_id, old_reply.pk],
    }
    assert shown_texts(detail(client, conversation_id)) == [first_q, "Old"]
    _, next_reply = chat(client, conversation_id=conversation_id, message=next_q)
    assert sent_turns(fake_upstream, next_q) == [
        ("user", first_q),
        ("assistant", "Old"),
        ("user", next_q),
    ]
    # After a new message the newest path is shown again.
    assert Conversation.objects.get(pk=conversation_id).current_leaf_id is None
    assert shown_texts(detail(client, conversation_id))[-1] == "Next"
    assert Message.objects.get(pk=next_reply.parent_id).parent_id == old_reply.pk


def test_a_failed_reply_can_be_retried_as_a_new_version(client, fake_upstream):
    question = unique("flaky")
    fake_upstream.script(question, status=500, error_body={"error": {"message": "boom"}})
    conversation_id, failed = chat(client, message=question)
    assert failed.status == "error"
    fake_upstream.script(question, tokens=["Fine", " now"])

    _, retried = chat(client, conversation_id=conversation_id, regenerate_of=failed.pk)

    assert retried.status == "complete" and retried.content == "Fine now"
    assert Message.objects.get(pk=failed.pk).status == "error"
    assert shown_texts(detail(client, conversation_id)) == [question, "Fine now"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"regenerate_of": "USER"}, 404, "message_not_found"),
        ({"edit_of": "REPLY", "message": "x"}, 404, "message_not_found"),
        ({"regenerate_of": "REPLY", "message": "x"}, 400, "invalid_request"),
        ({"regenerate_of": "REPLY", "edit_of": "USER", "message": "x"}, 400, "invalid_request"),
        ({"regenerate_of": "REPLY", "conversation_id": None}, 400, "invalid_request"),
        ({"regenerate_of": 0}, 400, "invalid_request"),
        ({"edit_of": True, "message": "x"}, 400, "invalid_request"),
    ],
)
def test_a_version_of_a_message_that_cannot_have_one_is_refused(
    client, fake_upstream, payload, status, code
):
    question = unique("refusals")
    fake_upstream.script(question, tokens=["ok"])
    conversation_id, reply = chat(client, message=question)
    ids = {"USER": reply.parent_id, "REPLY": reply.pk}
    body = {"conversation_id": conversation_id}
    body.update({key: ids.get(value, value) for key, value in payload.items()})
    requests_before = len(fake_upstream.requests)

    response = client.post("/api/chat/stream", json=body)

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert len(fake_upstream.requests) == requests_before
    assert Message.objects.filter(conversation_id=conversation_id).count() == 2


def test_versions_of_another_users_messages_are_not_found(
    client, client_for, make_user, fake_upstream
):
    question = unique("mine")
    fake_upstream.script(question, tokens=["private"])
    conversation_id, reply = chat(client, message=question)
    intruder = client_for(make_user("mallory"))

    regenerated = intruder.post(
        "/api/chat/stream", json={"conversation_id": conversation_id, "regenerate_of": reply.pk}
    )
    shown = intruder.post(f"/api/messages/{reply.pk}/show")

    assert regenerated.status_code == 404
    assert shown.status_code == 404 and shown.json()["error"]["code"] == "message_not_found"
    assert Message.objects.filter(conversation_id=conversation_id).count() == 2


def test_the_migration_links_each_saved_message_to_the_one_before(transactional_db, make_user):
    from importlib import import_module

    from django.apps import apps

    link_transcripts = import_module(
        "conversations.migrations.0005_message_versions"
    ).link_transcripts
    owner = make_user("bob")
    conversations = [Conversation.objects.create(owner=owner) for _ in range(2)]
    made = {
        c.pk: [
            Message.objects.create(conversation=c, role=role, content=f"{c.pk}-{n}")
            for n, role in enumerate(["user", "assistant", "user", "assistant"])
        ]
        for c in conversations
    }

    link_transcripts(apps, None)

    for messages in made.values():
        parents = [Message.objects.get(pk=m.pk).parent_id for m in messages]
        assert parents == [None, *(m.pk for m in messages[:-1])]


def test_the_page_shows_versions_and_switches_between_them(
    browser_page_for, user, client, fake_upstream
):
    question = unique("page versions")
    fake_upstream.script(question, tokens=["Reply", " one"])
    conversation_id, first = chat(client, message=question)
    page = browser_page_for(user)
    page.goto(f"/c/{conversation_id}/")
    fake_upstream.script(question, tokens=["Reply", " two"])

    page.get_by_role("button", name="Regenerate").click()

    reply = page.locator(".message.assistant").last
    reply.locator(".version-position").wait_for()
    assert reply.locator(".version-position").inner_text() == "2 / 2"
    assert "Reply two" in reply.locator(".message-body").inner_text()
    assert page.locator(".message.assistant").count() == 1
    page.get_by_role("button", name="Previous version").click()
    page.locator(f"#message-{first.pk}").wait_for()
    shown = page.locator(".message.assistant").last
    assert shown.locator(".version-position").inner_text() == "1 / 2"
    assert "Reply one" in shown.locator(".message-body").inner_text()
    page.reload()
    assert page.locator(f"#message-{first.pk} .version-position").inner_text() == "1 / 2"


def test_the_page_edits_a_message_and_the_upstream_gets_the_edited_path(
    browser_page_for, user, client, fake_upstream
):
    first_q, second_q, edited_q = unique("page one"), unique("page two"), unique("page edited")
    fake_upstream.script(first_q, tokens=["P1"])
    fake_upstream.script(second_q, tokens=["P2"])
    fake_upstream.script(edited_q, tokens=["P2", " again"])
    conversation_id, _ = chat(client, message=first_q)
    _, second_reply = chat(client, conversation_id=conversation_id, message=second_q)
    page = browser_page_for(user)
    page.goto(f"/c/{conversation_id}/")

    page.locator(f"#message-{second_reply.parent_id}").get_by_role("button", name="Edit").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    editor.fill(edited_q)
    editor.press("Enter")

    edited = page.locator(".message.user").last
    edited.locator(".version-position").wait_for()
    assert edited.locator(".version-position").inner_text() == "2 / 2"
    assert edited.locator(".message-body").inner_text() == edited_q
    assert "P2 again" in page.locator(".message.assistant").last.inner_text()
    assert page.locator(".message").count() == 4
    assert sent_turns(fake_upstream, edited_q) == [
        ("user", first_q),
        ("assistant", "P1"),
        ("user", edited_q),
    ]


def test_the_admin_transcript_shows_every_branch_with_its_versions(
    client, client_for, make_user, fake_upstream
):
    question = unique("admin branches")
    fake_upstream.script(question, tokens=["Branch", " A"])
    conversation_id, first = chat(client, message=question)
    fake_upstream.script(question, tokens=["Branch", " B"])
    _, second = chat(client, conversation_id=conversation_id, regenerate_of=first.pk)
    staff = client_for(make_user("staff", is_staff=True, is_superuser=True))

    page = staff.get(f"/admin/conversations/conversation/{conversation_id}/change/").text

    assert "Branch A" in page and "Branch B" in page
    assert f"#{first.pk} ← #{first.parent_id}" in page
    assert "version 1 of 2" in page and "version 2 of 2" in page
    assert page.index("version 1 of 2") < page.index("version 2 of 2")


def test_insert_chain_links_each_row_to_the_one_before_in_one_statement(
    transactional_db, make_user, django_assert_num_queries
):
    from conversations import statements

    conversation = Conversation.objects.create(owner=make_user("carol"))
    [root] = statements.insert_rows(
        Message, [{"conversation": conversation, "role": "user", "content": "root"}]
    )
    rows = [
        {"conversation": conversation, "role": "user", "content": "a"},
        {"conversation": conversation, "role": "assistant", "content": "b"},
    ]

    # One statement on the fast path (the keys are drawn inside it); a transaction with the ORM.
    fast = statements.implementation().__name__.endswith("postgresql")
    with django_assert_num_queries(1 if fast else 4):
        saved = statements.insert_chain(Message, rows, chain="parent", first=root.pk)

    keys = [message.pk for message in saved]
    assert keys == sorted(keys)
    assert [(m.content, m.parent_id) for m in saved] == [("a", root.pk), ("b", keys[0])]
    stored = list(Message.objects.filter(pk__in=keys).order_by("pk"))
    assert [(m.content, m.parent_id) for m in stored] == [("a", root.pk), ("b", keys[0])]
    assert all(m.attach_count == 0 and m.status == "complete" for m in stored)  # defaults
