"""Plain SQL for the few statements every reply makes: insert rows, update rows by key.

The ORM compiles each query anew, which on the benchmark machine costs more CPU than the round
trip to the database (~0.5 ms a statement) and was most of a reply's cost before its first
token. These build their SQL once per model and column set from the model's ``_meta`` and adapt
each value with its field's ``get_db_prep_save``, so they follow the models and run on SQLite
and PostgreSQL alike. Use them inside ``transaction.atomic()`` where several must hold together.
On PostgreSQL ``insert_with_children`` and ``update_with_parent`` write two tables in one
statement (a data-modifying WITH): one round trip, and no transaction to open and commit.
``insert_chain`` (and ``insert_with_children`` given a ``chain`` field) writes rows that each
point to the one before: on PostgreSQL the keys are drawn from the table's sequence inside the
statement, so that too is one statement.
``add_to_row`` adds amounts to a counter row, inserting it if missing (``INSERT … ON CONFLICT
DO UPDATE``, which both databases have); ``update_with_parent`` can do that in its statement too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

_M = TypeVar("_M", bound=Model)


@cache
def adapter() -> BaseDatabaseWrapper:
    """A connection object of the default database that never connects: it quotes names and
    adapts values (``ops``, ``get_db_prep_save``) alike for every thread and task. Statements
    built on the event loop use it, since Django's ``connection`` there is one object per
    request's context, built anew for each request."""
    return connections.create_connection(DEFAULT_DB_ALIAS)


def concrete_field(model: type[Model], name: str) -> Field[Any, Any]:
    """The field ``name`` of ``model`` that has a column (``get_field`` also finds the reverse
    side of a relation, which has none)."""
    field = model._meta.get_field(name)
    if not isinstance(field, Field):
        raise TypeError(f"{model.__name__}.{name} has no column")
    return field


@cache
def _columns(model: type[Model], names: tuple[str, ...]) -> tuple[list[Field[Any, Any]], list[str]]:
    fields = [concrete_field(model, name) for name in names]
    return fields, [adapter().ops.quote_name(field.column) for field in fields]


def _table(model: type[Model]) -> str:
    return adapter().ops.quote_name(model._meta.db_table)


@cache
def _insert_sql(model: type[Model], names: tuple[str, ...], rows: int) -> str:
    _, columns = _columns(model, names)
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    pk = adapter().ops.quote_name(model._meta.pk.column)
    return (
        f"INSERT INTO {_table(model)} ({', '.join(columns)}) "
        f"VALUES {', '.join([row] * rows)} RETURNING {pk}"
    )


@cache
def _defaulted(model: type[Model], names: tuple[str, ...]) -> tuple[Field[Any, Any], ...]:
    """The model's fields with a default that ``names`` leaves out (the database has no
    default of its own for them: Django applies defaults itself)."""
    given = set(names)
    return tuple(
        field
        for field in model._meta.concrete_fields
        if field.name not in given and not field.primary_key and field.has_default()
    )


def _completed(
    model: type[Model], names: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> tuple[tuple[str, ...], Sequence[Sequence[Any]]]:
    """``names`` and ``rows`` with the left-out fields that have a default, so that a field
    added with a default cannot break an insert that does not name it."""
    defaulted = _defaulted(model, names)
    if not defaulted:
        return names, rows
    names = names + tuple(field.name for field in defaulted)
    return names, [(*row, *(field.get_default() for field in defaulted)) for row in rows]


def insert_rows(
    model: type[Model], names: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> list[int]:
    """Insert ``rows`` (values in the order of ``names``) in one statement; their primary keys."""
    names, rows = _completed(model, tuple(names), rows)
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


def update_rows(model: type[Model], values: dict[str, Any], where: dict[str, Any]) -> int:
    """``UPDATE … SET values WHERE`` every ``where`` field equals its value; rows changed."""
    names, keys = tuple(values), tuple(where)
    params = _prepared(model, names, values.values()) + _prepared(model, keys, where.values())
    with connection.cursor() as cursor:
        cursor.execute(update_sql(model, names, keys), params)
        changed: int = cursor.rowcount
        return changed


def insert_chain(
    model: type[Model],
    names: Sequence[str],
    rows: Sequence[Sequence],
    *,
    chain: str,
    first: int | None,
) -> list[int]:
    """insert_rows, where each row's ``chain`` field (a foreign key to ``model`` itself) points
    to the row before it, and the first row's to ``first``; the keys, in order (ascending)."""
    names, rows = _completed(model, tuple(names), rows)
    if connection.vendor != "postgresql":
        keys: list[int] = []
        with transaction.atomic():
            for row in rows:
                previous = keys[-1] if keys else first
                keys += insert_rows(model, (chain, *names), [(previous, *row)])
        return keys
    params = [value for row in rows for value in _prepared(model, names, row)]
    params.append(first)
    with connection.cursor() as cursor:
        cursor.execute(_insert_chain_sql(model, names, len(rows), chain, None), params)
        return sorted(pk for (pk, *_) in cursor.fetchall())


def insert_with_children(
    parent: type[Model],
    names: tuple[str, ...],
    values: Sequence[Any],
    child: type[Model],
    child_names: tuple[str, ...],
    children: Sequence[Sequence[Any]],
    *,
    chain: str | None = None,
) -> tuple[int, list[int]]:
    """Insert a ``parent`` row and ``children`` rows of ``child`` that point to it, all or none;
    the parent's key and the children's, in order. Given ``chain`` (a field of ``child`` that
    points to ``child``), each child points to the one before it (the first to none). On
    PostgreSQL this is one statement (a data-modifying WITH, no transaction to open and
    commit), elsewhere a transaction of several."""
    (names, (values,)), (child_names, children) = (
        _completed(parent, tuple(names), [values]),
        _completed(child, tuple(child_names), children),
    )
    link = _link(child, parent)
    if connection.vendor != "postgresql":
        with transaction.atomic():
            [pk] = insert_rows(parent, names, [values])
            rows = [(pk, *row) for row in children]
            if chain is None:
                return pk, insert_rows(child, (link.name, *child_names), rows)
            return pk, insert_chain(child, (link.name, *child_names), rows, chain=chain, first=None)
    with connection.cursor() as cursor:
        cursor.execute(
            *insert_with_children_statement(
                parent, names, values, child, child_names, children, chain=chain
            )
        )
        return parent_and_children_keys(cursor.fetchall())


def insert_with_children_statement(
    parent: type[Model],
    names: Sequence[str],
    values: Sequence,
    child: type[Model],
    child_names: Sequence[str],
    children: Sequence[Sequence],
    *,
    chain: str | None = None,
) -> tuple[str, list]:
    """PostgreSQL: insert_with_children's one statement and its parameters, to run on any
    connection (``asyncdb``'s, on the event loop); ``parent_and_children_keys`` reads its rows."""
    (names, (values,)), (child_names, children) = (
        _completed(parent, tuple(names), [values]),
        _completed(child, tuple(child_names), children),
    )
    params = _prepared(parent, names, values)
    for row in children:
        params += _prepared(child, child_names, row)
    if chain is not None:
        params.append(None)
        sql = _insert_chain_sql(child, child_names, len(children), chain, (parent, names))
    else:
        sql = _insert_with_children_sql(parent, names, child, child_names, len(children))
    return sql, params


def parent_and_children_keys(saved: Sequence[Sequence]) -> tuple[int, list[int]]:
    """The parent's key and the children's, in order, from insert_with_children's rows."""
    return saved[0][1], sorted(pk for pk, _ in saved)


@cache
def _insert_with_children_sql(
    parent: type[Model],
    names: tuple[str, ...],
    child: type[Model],
    child_names: tuple[str, ...],
    rows: int,
) -> str:
    _, columns = _columns(parent, names)
    _, child_columns = _columns(child, child_names)
    quote = adapter().ops.quote_name
    link = quote(_link(child, parent).column)
    aliases = ", ".join(f"v{index}" for index in range(len(child_columns)))
    row = ", ".join(["%s"] * len(child_columns))
    return (
        f"WITH parent AS (INSERT INTO {_table(parent)} ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"RETURNING {quote(parent._meta.pk.column)} AS pk) "
        f"INSERT INTO {_table(child)} ({link}, {', '.join(child_columns)}) "
        f"SELECT parent.pk, {aliases} FROM parent, "
        f"(VALUES {', '.join(f'({position}, {row})' for position in range(rows))}) "
        f"AS v(position, {aliases}) ORDER BY position "
        f"RETURNING {quote(child._meta.pk.column)}, {link}"
    )


@cache
def _insert_chain_sql(
    model: type[Model],
    names: tuple[str, ...],
    rows: int,
    chain: str,
    parent: tuple[type[Model], tuple[str, ...]] | None,
) -> str:
    """PostgreSQL: the keys are taken from the table's sequence first (ascending in the rows'
    order), so each row can name the one before it; the first row's ``chain`` is the last
    parameter. With ``parent`` (a model and its columns), its row is inserted first and each
    row points to it: the parameters start with its values."""
    _, columns = _columns(model, names)
    quote = adapter().ops.quote_name
    pk = quote(model._meta.pk.column)
    chain_column = quote(concrete_field(model, chain).column)
    aliases = ", ".join(f"v{index}" for index in range(len(columns)))
    row = ", ".join(["%s"] * len(columns))
    sequence = f"pg_get_serial_sequence('{_table(model)}', '{model._meta.pk.column}')"
    prefix, source, link_column, link_value = "WITH ", "", "", ""
    if parent is not None:
        parent_model, parent_names = parent
        _, parent_columns = _columns(parent_model, parent_names)
        prefix = (
            f"WITH parent AS (INSERT INTO {_table(parent_model)} ({', '.join(parent_columns)}) "
            f"VALUES ({', '.join(['%s'] * len(parent_columns))}) "
            f"RETURNING {quote(parent_model._meta.pk.column)} AS pk), "
        )
        source = "parent CROSS JOIN "
        link_column = f"{quote(_link(model, parent_model).column)}, "
        link_value = "parent.pk, "
    returning = f"{pk}, {link_column.rstrip(', ')}" if parent is not None else pk
    return (
        f"{prefix}keys AS (SELECT row_number() OVER (ORDER BY key) AS position, key "
        f"FROM (SELECT nextval({sequence}) AS key FROM generate_series(1, {rows})) AS drawn) "
        f"INSERT INTO {_table(model)} ({pk}, {link_column}{chain_column}, {', '.join(columns)}) "
        f"SELECT keys.key, {link_value}COALESCE(previous.key, first.key), {aliases} "
        f"FROM {source}"
        f"(VALUES {', '.join(f'({position}, {row})' for position in range(1, rows + 1))}) "
        f"AS v(position, {aliases}) "
        f"JOIN keys ON keys.position = v.position "
        f"LEFT JOIN keys AS previous ON previous.position = v.position - 1 "
        f"CROSS JOIN (SELECT %s::bigint AS key) AS first "
        f"ORDER BY v.position RETURNING {returning}"
    )


@dataclass(frozen=True)
class Addition:
    """Amounts to add to the row of ``model`` that ``keys`` name (one unique constraint holds
    exactly those fields), inserting it with the amounts if there is none."""

    model: type[Model]
    keys: dict
    amounts: dict

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.keys, *self.amounts)

    def params(self) -> list:
        return _prepared(self.model, self.names, [*self.keys.values(), *self.amounts.values()])


def add_to_row(addition: Addition) -> None:
    """``INSERT`` the row, or add the amounts to the columns of the one already there."""
    model, keys, amounts = addition.model, tuple(addition.keys), tuple(addition.amounts)
    with connection.cursor() as cursor:
        cursor.execute(_add_to_row_sql(model, keys, amounts), addition.params())


@cache
def _add_to_row_sql(model: type[Model], keys: tuple[str, ...], amounts: tuple[str, ...]) -> str:
    _, columns = _columns(model, keys + amounts)
    values = ", ".join(["%s"] * len(columns))
    return (
        f"INSERT INTO {_table(model)} ({', '.join(columns)}) VALUES ({values}) "
        f"{_on_conflict_add(model, keys, amounts)}"
    )


def _on_conflict_add(model: type[Model], keys: tuple[str, ...], amounts: tuple[str, ...]) -> str:
    _, key_columns = _columns(model, keys)
    _, amount_columns = _columns(model, amounts)
    table = _table(model)
    sums = ", ".join(f"{col} = {table}.{col} + EXCLUDED.{col}" for col in amount_columns)
    return f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {sums}"


def update_with_parent(
    model: type[Model],
    values: dict[str, Any],
    where: dict[str, Any],
    link: str,
    parent_values: dict[str, Any],
    *,
    addition: Addition | None = None,
) -> int:
    """PostgreSQL: update_rows, and in the same statement set ``parent_values`` on the rows
    the updated ones point to through ``link`` and, given an ``addition``, add to its row, once
    if a row was updated and not at all if none was; how many ``model`` rows were updated."""
    names, keys, parent_names = tuple(values), tuple(where), tuple(parent_values)
    parent = _related_model(model, link)
    params = (
        _prepared(model, names, values.values())
        + _prepared(model, keys, where.values())
        + _prepared(parent, parent_names, parent_values.values())
    )
    added = None
    if addition is not None:
        added = (addition.model, tuple(addition.keys), tuple(addition.amounts))
        params += addition.params()
    updated: int
    with connection.cursor() as cursor:
        sql = _update_with_parent_sql(model, names, keys, link, parent_names, added)
        cursor.execute(sql, params)
        [(updated,)] = cursor.fetchall()
    return updated


@cache
def _update_with_parent_sql(
    model: type[Model],
    names: tuple[str, ...],
    keys: tuple[str, ...],
    link: str,
    parent_names: tuple[str, ...],
    added: tuple[type[Model], tuple[str, ...], tuple[str, ...]] | None = None,
) -> str:
    link_column = concrete_field(model, link).column
    parent = _related_model(model, link)
    quote = adapter().ops.quote_name
    _, parent_columns = _columns(parent, parent_names)
    assignments = ", ".join(f"{column} = %s" for column in parent_columns)
    addition = ""
    if added is not None:
        counter, counter_keys, amounts = added
        fields, columns = _columns(counter, counter_keys + amounts)
        # Typed, as a SELECT list gives its parameters no type of their own to take.
        # Field.cast_db_type is Django's own (what Cast uses), undocumented, not in the stubs.
        casts = [field.cast_db_type(adapter()) for field in fields]  # type: ignore[attr-defined]
        typed = ", ".join(f"CAST(%s AS {cast})" for cast in casts)
        addition = (
            f", added AS (INSERT INTO {_table(counter)} ({', '.join(columns)}) "
            f"SELECT {typed} FROM updated {_on_conflict_add(counter, counter_keys, amounts)})"
        )
    return (
        f"WITH updated AS ({update_sql(model, names, keys)} RETURNING {quote(link_column)}), "
        f"parent AS (UPDATE {_table(parent)} SET {assignments} "
        f"WHERE {quote(parent._meta.pk.column)} IN (SELECT {quote(link_column)} FROM updated))"
        f"{addition} SELECT count(*) FROM updated"
    )


def _link(child: type[Model], parent: type[Model]) -> Field[Any, Any]:
    return next(f for f in child._meta.concrete_fields if f.related_model is parent)


def _related_model(model: type[Model], link: str) -> type[Model]:
    """The model that ``model``'s foreign key ``link`` points to."""
    related = concrete_field(model, link).related_model
    if not isinstance(related, type):  # None for a plain field; "self" is resolved by now
        raise TypeError(f"{model.__name__}.{link} is not a foreign key")
    return related


def _prepared(model: type[Model], names: tuple[str, ...], values: Iterable[Any]) -> list[Any]:
    fields, _ = _columns(model, names)
    wrapper = adapter()
    return [
        field.get_db_prep_save(value, wrapper) for field, value in zip(fields, values, strict=True)
    ]


def as_saved(instance: _M) -> _M:
    """Mark an instance built from values just written as loaded from the database."""
    instance._state.adding = False
    instance._state.db = DEFAULT_DB_ALIAS
    return instance
