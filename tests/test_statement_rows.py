"""The statements every reply makes (``conversations.statements``), in-process against the test
database, through both implementations: the fast path's SQL (PostgreSQL) and the ORM
(CHAT_FAST_PATH=0, and any other database). Each writes the same rows, every concrete field of
the model: a field a row leaves out gets its default, so a field added to a model with a
default breaks no insert (proved here on a table of the tests' own)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, models

from conversations import statements
from conversations.models import Conversation, Message
from conversations.statements import orm, postgresql

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2026, 1, 2, 3, 4, 9, tzinfo=UTC)

IMPLEMENTATIONS = [
    pytest.param(orm, id="orm"),
    pytest.param(
        postgresql,
        id="postgresql",
        marks=pytest.mark.skipif(
            connection.vendor != "postgresql",
            reason="the fast path's SQL is PostgreSQL's (make test and CI run on PostgreSQL)",
        ),
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    return request.param


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create(username="stella")


@pytest.fixture
def conversation(owner):
    return Conversation.objects.create(owner=owner, title="kept")


def columns(instance: models.Model) -> dict:
    """Every concrete field's value, by attribute name."""
    return {
        field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields
    }


def saved_columns(instance: models.Model) -> dict:
    return columns(type(instance).objects.get(pk=instance.pk))


def test_the_facade_runs_the_fast_paths_sql_exactly_on_postgresql_with_the_fast_path(settings):
    fast = settings.CHAT_FAST_PATH and connection.vendor == "postgresql"

    assert statements.implementation() is (postgresql if fast else orm)


@pytest.mark.django_db
def test_insert_rows_returns_the_saved_instances_in_order_as_bulk_create_leaves_them(
    implementation, conversation
):
    rows = [
        {"conversation": conversation, "role": "user", "content": "one", "created_at": NOW},
        {
            "conversation": conversation,
            "role": "assistant",
            "content": "two ✓",
            "created_at": LATER,
        },
    ]

    saved = implementation.insert_rows(Message, rows)

    assert [message.content for message in saved] == ["one", "two ✓"]
    assert saved[0].pk < saved[1].pk
    for message in saved:
        assert (message._state.adding, message._state.db) == (False, connection.alias)
        assert columns(message) == saved_columns(message)


@pytest.mark.django_db
def test_a_field_a_row_leaves_out_gets_its_default(implementation, conversation):
    [saved] = implementation.insert_rows(
        Message, [{"conversation": conversation, "role": "assistant", "created_at": NOW}]
    )

    built = Message(conversation=conversation, role="assistant", created_at=NOW)
    assert saved_columns(saved) == {**columns(built), "id": saved.pk}
    assert (saved.status, saved.content, saved.error_code, saved.attach_count) == (
        "complete",
        "",
        "",
        0,
    )
    assert (saved.finished_at, saved.ttft_ms) == (None, None)


@pytest.mark.django_db
def test_auto_now_fields_get_the_time_of_the_insert_and_given_times_are_kept(implementation, owner):
    before = datetime.now(UTC)
    [saved] = implementation.insert_rows(Conversation, [{"owner": owner, "created_at": NOW}])

    row = Conversation.objects.get(pk=saved.pk)
    assert row.created_at == saved.created_at == NOW
    assert row.updated_at == saved.updated_at >= before


@pytest.mark.django_db
def test_an_unknown_field_name_is_refused_before_anything_is_written(implementation, owner):
    with pytest.raises(TypeError, match="tilte"):
        implementation.insert_rows(Conversation, [{"owner": owner, "tilte": "typo"}])

    assert not Conversation.objects.exists()


@pytest.mark.django_db
def test_insert_with_children_saves_a_parent_and_its_children_in_order(implementation, owner):
    children = [
        {"role": "user", "content": "earlier", "created_at": NOW},
        {"role": "user", "content": "hello", "created_at": NOW},
        {"role": "assistant", "status": "streaming", "model": "m1", "created_at": NOW},
    ]

    parent, saved = implementation.insert_with_children(
        Conversation, {"owner": owner, "title": "New", "model": "m1", "created_at": NOW},
        Message, children,
    )  # fmt: skip

    assert columns(parent) == saved_columns(parent)
    assert (parent.title, parent.model, parent.created_at) == ("New", "m1", NOW)
    assert [m.pk for m in saved] == sorted(m.pk for m in saved)
    assert [m.content for m in parent.messages.order_by("pk")] == ["earlier", "hello", ""]
    for message in saved:
        assert message.conversation_id == parent.pk
        assert message.conversation is parent
        assert (message._state.adding, message._state.db) == (False, connection.alias)
        assert columns(message) == saved_columns(message)


@pytest.mark.django_db(transaction=True)
def test_insert_with_children_writes_nothing_when_a_child_cannot_be_written(implementation, owner):
    """Autocommit, as a server runs it: no test transaction to roll the parent back."""
    children = [
        {"role": "user", "content": "hello", "created_at": NOW},
        {"role": "user", "content": None, "created_at": NOW},
    ]

    with pytest.raises(IntegrityError):
        implementation.insert_with_children(
            Conversation, {"owner": owner, "title": "half written"}, Message, children
        )

    assert not Conversation.objects.filter(title="half written").exists()
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_update_rows_changes_only_the_rows_matching_every_key(implementation, conversation):
    pks = [
        message.pk
        for message in implementation.insert_rows(
            Message,
            [
                {"conversation": conversation, "role": "assistant", "content": c, "status": s}
                for c, s in (("a", "streaming"), ("b", "streaming"), ("c", "complete"))
            ],
        )
    ]

    changed = implementation.update_rows(
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
    assert implementation.update_rows(Message, {"content": "x"}, {"id": max(pks) + 1000}) == 0


@pytest.mark.django_db
def test_update_with_parent_sets_the_parents_values_only_when_a_row_is_updated(
    implementation, conversation
):
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=NOW)
    streaming, done = implementation.insert_rows(
        Message,
        [
            {"conversation": conversation, "role": "assistant", "status": "streaming"},
            {"conversation": conversation, "role": "assistant", "content": "old"},
        ],
    )

    def finalise(message: Message, at: datetime) -> int:
        return implementation.update_with_parent(
            Message,
            {"status": "complete", "content": "new"},
            {"id": message.pk, "status": "streaming"},
            "conversation",
            {"updated_at": at},
        )

    assert finalise(done, LATER) == 0
    assert Conversation.objects.get(pk=conversation.pk).updated_at == NOW
    assert finalise(streaming, LATER) == 1
    assert Conversation.objects.get(pk=conversation.pk).updated_at == LATER
    assert finalise(streaming, NOW) == 0
    assert list(Message.objects.order_by("pk").values_list("status", "content")) == [
        ("complete", "new"),
        ("complete", "old"),
    ]


@pytest.mark.django_db
def test_both_implementations_write_the_same_rows(owner):
    if connection.vendor != "postgresql":
        pytest.skip("the fast path's SQL is PostgreSQL's (make test and CI run on PostgreSQL)")
    parent = {"owner": owner, "title": "twin", "system_prompt": "Be brief.", "created_at": NOW}
    children = [
        {"role": "user", "content": "«ünïcode» 🙂", "created_at": NOW},
        {"role": "assistant", "status": "streaming", "model": "m1", "created_at": NOW},
    ]

    written = [
        implementation.insert_with_children(Conversation, parent, Message, children)
        for implementation in (orm, postgresql)
    ]

    def comparable(instance: models.Model) -> dict:
        row = saved_columns(instance)
        return {k: v for k, v in row.items() if k not in ("id", "conversation_id", "updated_at")}

    (orm_parent, orm_children), (sql_parent, sql_children) = written
    assert comparable(orm_parent) == comparable(sql_parent)
    assert [comparable(m) for m in orm_children] == [comparable(m) for m in sql_children]


# A field added with a default: the table as the migration adding it leaves it (the column is
# NOT NULL and has no default in the database: Django applies defaults itself).


class Probe(models.Model):
    name = models.CharField(max_length=20)

    class Meta:
        app_label = "conversations"
        db_table = "tests_statements_probe"
        managed = False

    def __str__(self) -> str:
        return self.name


class ProbeWithAField(models.Model):
    """Probe once a field with a default has been added to it."""

    name = models.CharField(max_length=20)
    weight = models.PositiveIntegerField(default=7)

    class Meta:
        app_label = "conversations"
        db_table = "tests_statements_probe"
        managed = False

    def __str__(self) -> str:
        return self.name


@pytest.fixture
def probe_table_with_an_added_field(transactional_db):
    with connection.schema_editor() as editor:
        editor.create_model(Probe)
        editor.add_field(ProbeWithAField, ProbeWithAField._meta.get_field("weight"))
    yield
    with connection.schema_editor() as editor:
        editor.delete_model(Probe)


def test_a_field_added_with_a_default_needs_no_change_to_any_insert(
    implementation, probe_table_with_an_added_field
):
    """The rows name only the fields their caller sets, as the services' rows do."""
    table = connection.ops.quote_name(Probe._meta.db_table)
    with pytest.raises(IntegrityError), connection.cursor() as cursor:
        # An insert that named only the fields it was given would fail.
        cursor.execute(f"INSERT INTO {table} (name) VALUES (%s)", ["named only"])

    [saved] = implementation.insert_rows(ProbeWithAField, [{"name": "unchanged row"}])

    assert saved.weight == 7
    assert ProbeWithAField.objects.get(pk=saved.pk).weight == 7
