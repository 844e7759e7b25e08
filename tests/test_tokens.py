"""The API token lookup, which every API request makes before anything else."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.utils import timezone

from conversations.models import ApiToken
from conversations.tokens import (
    LAST_USED_RESOLUTION,
    api_token_aauthenticate,
    api_token_create,
)
from tests.loops import run_in_new_loop


@pytest.fixture
def django_connections_opened():
    """The native thread id of each Django database connection opened meanwhile."""
    opened_by: list[int] = []

    def record(**kwargs) -> None:
        opened_by.append(threading.get_native_id())

    connection_created.connect(record)
    yield opened_by
    connection_created.disconnect(record)


on_postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="only PostgreSQL has the lookup on the event loop (CI runs this test)",
)


def other_connection() -> psycopg.Connection:
    """A connection of the test's own, outside Django's."""
    params = connection.get_connection_params()
    names = ("dbname", "user", "password", "host", "port")
    return psycopg.connect(**{name: params[name] for name in names if params.get(name)})


@on_postgresql_only
def test_token_lookup_on_postgresql_runs_on_the_event_loop(user, django_connections_opened):
    """No worker thread and no Django connection: the query is awaited on the loop."""
    token, raw = api_token_create(owner=user)

    owner = run_in_new_loop(api_token_aauthenticate(raw))

    assert owner == user
    assert django_connections_opened == []
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_token_lookup_returns_the_owner_as_saved(user):
    user.first_name, user.last_login = "Alice", timezone.now()
    user.save()
    _, raw = api_token_create(owner=user)

    owner = run_in_new_loop(api_token_aauthenticate(raw))

    assert (owner.pk, owner.username, owner.first_name) == (user.pk, "alice", "Alice")
    assert owner.last_login == user.last_login
    assert owner.is_active is True
    assert owner._state.adding is False


def test_token_lookup_refuses_unknown_revoked_and_inactive_owners(user):
    token, raw = api_token_create(owner=user)

    assert run_in_new_loop(api_token_aauthenticate(raw + "x")) is None
    user.is_active = False
    user.save()
    assert run_in_new_loop(api_token_aauthenticate(raw)) is None
    user.is_active = True
    user.save()
    assert run_in_new_loop(api_token_aauthenticate(raw)) == user
    token.revoked_at = timezone.now()
    token.save()
    assert run_in_new_loop(api_token_aauthenticate(raw)) is None


def test_token_lookup_records_last_use_once_a_minute_and_only_for_active_owners(user):
    def last_use_after_lookup():
        run_in_new_loop(api_token_aauthenticate(raw))
        token.refresh_from_db()
        return token.last_used_at

    token, raw = api_token_create(owner=user)
    user.is_active = False
    user.save()
    assert last_use_after_lookup() is None

    user.is_active = True
    user.save()
    first_use = last_use_after_lookup()
    assert first_use is not None
    assert last_use_after_lookup() == first_use

    stale = first_use - LAST_USED_RESOLUTION - timedelta(seconds=1)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=stale)
    assert last_use_after_lookup() >= first_use


@on_postgresql_only
def test_token_lookup_does_not_wait_for_its_last_use_to_be_recorded(user):
    token, raw = api_token_create(owner=user)
    locker = other_connection()
    locker.execute("SELECT 1 FROM conversations_apitoken WHERE id = %s FOR UPDATE", [token.pk])

    async def lookup_while_the_token_row_is_locked():
        try:
            return await asyncio.wait_for(api_token_aauthenticate(raw), timeout=5)
        finally:
            locker.rollback()

    with locker:
        assert run_in_new_loop(lookup_while_the_token_row_is_locked()) == user
    token.refresh_from_db()
    assert token.last_used_at is not None


@on_postgresql_only
def test_token_use_that_cannot_be_recorded_is_logged_and_the_lookup_still_succeeds(user, caplog):
    _, raw = api_token_create(owner=user)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_last_use() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_last_use BEFORE UPDATE ON conversations_apitoken "
            "FOR EACH ROW EXECUTE FUNCTION refuse_last_use()"
        )
    try:
        with caplog.at_level(logging.WARNING, logger="conversations.asyncdb"):
            assert run_in_new_loop(api_token_aauthenticate(raw)) == user
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_last_use ON conversations_apitoken")
            cursor.execute("DROP FUNCTION refuse_last_use()")
    [record] = [record for record in caplog.records if record.name == "conversations.asyncdb"]
    assert record.getMessage() == "could not record a token's use"
    assert "refused by the test" in str(record.exc_info[1])
