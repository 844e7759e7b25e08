"""Plain SQL for the few statements every reply makes: insert rows, update rows by key.

The ORM compiles each query anew, which on the benchmark machine costs more CPU than the round
trip to the database (~0.5 ms a statement) and was most of a reply's cost before its first
token. These build their SQL once per model and column set from the model's ``_meta`` and adapt
each value with its field's ``get_db_prep_save``, so they follow the models and run on SQLite
and PostgreSQL alike. Use them inside ``transaction.atomic()`` where several must hold together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

from django.db import connection
from django.db.models import Model


@cache
def _columns(model: type[Model], names: tuple[str, ...]) -> tuple[list, list[str]]:
    fields = [model._meta.get_field(name) for name in names]
    return fields, [connection.ops.quote_name(field.column) for field in fields]


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


@cache
def _insert_sql(model: type[Model], names: tuple[str, ...], rows: int) -> str:
    _, columns = _columns(model, names)
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    pk = connection.ops.quote_name(model._meta.pk.column)
    return (
        f"INSERT INTO {_table(model)} ({', '.join(columns)}) "
        f"VALUES {', '.join([row] * rows)} RETURNING {pk}"
    )


def insert_rows(model: type[Model], names: Sequence[str], rows: Sequence[Sequence]) -> list[int]:
    """Insert ``rows`` (values in the order of ``names``) in one statement; their primary keys."""
    names = tuple(names)
    params = [value for row in rows for value in _prepared(model, names, row)]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(model, names, len(rows)), params)
        return [pk for (pk,) in cursor.fetchall()]


@cache
def update_sql(model: type[Model], names: tuple[str, ...], keys: tuple[str, ...]) -> str:
    _, columns = _columns(model, names)
    _, key_columns = _columns(model, keys)
    assignments = ", ".join(f"{column} = %s" for column in columns)
    condition = " AND ".join(f"{column} = %s" for column in key_columns)
    return f"UPDATE {_table(model)} SET {assignments} WHERE {condition}"


def update_rows(model: type[Model], values: dict, where: dict) -> int:
    """``UPDATE … SET values WHERE`` every ``where`` field equals its value; rows changed."""
    names, keys = tuple(values), tuple(where)
    params = _prepared(model, names, values.values()) + _prepared(model, keys, where.values())
    with connection.cursor() as cursor:
        cursor.execute(update_sql(model, names, keys), params)
        return cursor.rowcount


def _prepared(model: type[Model], names: tuple[str, ...], values: Iterable) -> list:
    fields, _ = _columns(model, names)
    return [
        field.get_db_prep_save(value, connection)
        for field, value in zip(fields, values, strict=True)
    ]


def as_saved(instance: Model) -> Model:
    """Mark an instance built from values just written as loaded from the database."""
    instance._state.adding = False
    instance._state.db = connection.alias
    return instance
