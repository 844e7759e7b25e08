"""The hand-written statements (``conversations.statements``) against the test database: what
each writes, and that a failing one leaves nothing half written. Both variants of
``insert_with_children`` run here: the one statement (PostgreSQL) and the transaction of two
(elsewhere, which runs on PostgreSQL too)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection

from conversations import statements
from conversations.models import Conversation, Message

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2026, 1, 2, 3, 4, 9, tzinfo=UTC)
CONVERSATION = ("owner", "title", "system_prompt", "model", "created_at", "updated_at")
MESSAGE = ("role", "content", "status", "model", "created_at")
TEXT = ("finish_reason", "error_code", "error_message")
"""Text columns without a default of their own (a left-out one would be NULL): inserts name
them."""
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="a PostgreSQL statement (CI runs on PostgreSQL)"
)


def texts(rows: list[tuple]) -> list[tuple]:
    """``rows`` with the TEXT columns empty."""
    return [(*row, "", "", "") for row in rows]


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create(username="stella")


@pytest.fixture
def conversation(owner):
    return Conversation.objects.create(owner=owner, title="kept")


@pytest.fixture(params=["one statement", "transaction of two"])
def insert_variant(request, monkeypatch):
    """Each way insert_with_children writes: the PostgreSQL statement, or the portable pair
    (taken by any other database; forced here by the vendor it checks)."""
    if request.param == "one statement":
        if connection.vendor != "postgresql":
            pytest.skip("the one-statement insert is PostgreSQL's (CI runs on PostgreSQL)")
    else:
        monkeypatch.setattr(connection, "vendor", "sqlite")
    return request.param


@pytest.mark.django_db
def test_insert_rows_writes_every_row_in_order_and_returns_their_keys(conversation):
    rows = [
        (conversation.pk, "user", "one", "complete", "", NOW),
        (conversation.pk, "assistant", "two ✓", "streaming", "m1", LATER),
    ]

    pks = statements.insert_rows(Message, ("conversation", *MESSAGE, *TEXT), texts(rows))

    assert pks == sorted(pks) and len(pks) == 2
    saved = Message.objects.filter(pk__in=pks).order_by("pk")
    assert [
        (m.pk, m.conversation_id, m.role, m.content, m.status, m.model, m.created_at) for m in saved
    ] == [(pk, *row) for pk, row in zip(pks, rows, strict=True)]


@pytest.mark.django_db
def test_insert_rows_gives_the_fields_it_leaves_out_their_defaults(conversation):
    names = ("conversation", "role", "content", "model", "created_at", *TEXT)
    row = (conversation.pk, "user", "hi", "", NOW)
    [pk] = statements.insert_rows(Message, names, texts([row]))

    message = Message.objects.get(pk=pk)
    assert (message.status, message.attach_count) == ("complete", 0)
    assert (message.finished_at, message.ttft_ms) == (None, None)


@pytest.mark.django_db
def test_update_rows_changes_only_the_rows_matching_every_key(conversation):
    pks = statements.insert_rows(
        Message,
        ("conversation", *MESSAGE, *TEXT),
        texts(
            [
                (conversation.pk, "assistant", "a", "streaming", "", NOW),
                (conversation.pk, "assistant", "b", "streaming", "", NOW),
                (conversation.pk, "assistant", "c", "complete", "", NOW),
            ]
        ),
    )

    changed = statements.update_rows(
        Message,
        {"content": "saved", "finished_at": LATER, "attach_count": 2},
        {"conversation": conversation.pk, "status": "streaming"},
    )

    assert changed == 2
    assert list(
        Message.objects.filter(pk__in=pks)
        .order_by("pk")
        .values_list("content", "finished_at", "attach_count")
    ) == [("saved", LATER, 2), ("saved", LATER, 2), ("c", None, 0)]
    assert statements.update_rows(Message, {"content": "x"}, {"id": max(pks) + 1000}) == 0


@pytest.mark.django_db
def test_insert_with_children_writes_a_parent_and_its_children_in_order(owner, insert_variant):
    values = (owner.pk, "New", "Be brief.", "m1", NOW, NOW)
    children = [
        ("user", "earlier", "complete", "", NOW),
        ("user", "hello", "complete", "", NOW),
        ("assistant", "", "streaming", "m1", NOW),
    ]

    pk, child_pks = statements.insert_with_children(
        Conversation, CONVERSATION, values, Message, (*MESSAGE, *TEXT), texts(children)
    )

    conversation = Conversation.objects.get(pk=pk)
    assert [getattr(conversation, name) for name in ("owner_id", *CONVERSATION[1:])] == [*values]
    assert child_pks == sorted(child_pks)
    saved = [
        (m.pk, m.role, m.content, m.status, m.model, m.created_at, m.attach_count)
        for m in conversation.messages.order_by("pk")
    ]
    assert saved == [(pk, *row, 0) for pk, row in zip(child_pks, children, strict=True)]


@pytest.mark.django_db(transaction=True)
def test_insert_with_children_writes_nothing_when_a_child_cannot_be_written(owner, insert_variant):
    """Autocommit, as a server runs it: no test transaction to roll the parent back."""
    children = [("user", "hello", "complete", "", NOW), ("user", None, "complete", "", NOW)]

    with pytest.raises(IntegrityError):
        statements.insert_with_children(
            Conversation,
            CONVERSATION,
            (owner.pk, "half written", "", "m1", NOW, NOW),
            Message,
            (*MESSAGE, *TEXT),
            texts(children),
        )

    assert not Conversation.objects.filter(title="half written").exists()
    assert not Message.objects.exists()


@on_postgresql
@pytest.mark.django_db
def test_update_with_parent_sets_the_parents_values_only_when_a_row_is_updated(conversation):
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=NOW)
    [streaming, done] = statements.insert_rows(
        Message,
        ("conversation", *MESSAGE, *TEXT),
        texts(
            [
                (conversation.pk, "assistant", "", "streaming", "", NOW),
                (conversation.pk, "assistant", "old", "complete", "", NOW),
            ]
        ),
    )

    def finalise(pk: int, at: datetime) -> int:
        return statements.update_with_parent(
            Message,
            {"status": "complete", "content": "new"},
            {"id": pk, "status": "streaming"},
            "conversation",
            {"updated_at": at},
        )

    assert finalise(done, LATER) == 0
    assert Conversation.objects.get(pk=conversation.pk).updated_at == NOW
    assert finalise(streaming, LATER) == 1
    assert Conversation.objects.get(pk=conversation.pk).updated_at == LATER
    assert list(Message.objects.order_by("pk").values_list("status", "content")) == [
        ("complete", "new"),
        ("complete", "old"),
    ]


@pytest.mark.django_db
def test_an_instance_built_from_written_values_counts_as_saved(conversation):
    message = Message(pk=12345, conversation=conversation, role="user", created_at=NOW)
    assert message._state.adding

    assert statements.as_saved(message) is message
    assert (message._state.adding, message._state.db) == (False, connection.alias)
