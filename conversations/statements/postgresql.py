"""The statements on PostgreSQL as SQL built once per model (the fast path, CHAT_FAST_PATH=1).

Why. The ORM compiles each query anew, which on the benchmark machine cost more CPU than the
round trip to the database (~0.5 ms a statement) and was most of a reply's cost before its
first token. Here each statement's SQL is built once per model and column set and kept, and
each value is adapted by its field as the ORM adapts it (``pre_save``, then
``get_db_prep_save``), so the rows are the ORM's own: an insert writes every concrete field,
with its default or its ``auto_now`` time when the row leaves it out. ``insert_with_children``
and ``update_with_parent`` write two tables in one statement (a data-modifying WITH): one
round trip, and no transaction to open and commit.

A model with a field whose value the database computes (``db_default``, ``GeneratedField``)
goes through ``orm`` instead: its insert would need ``DEFAULT`` in place of a value.

Names are quoted and values adapted by one connection object that never connects
(``adapter``), the same for every thread and task: a statement can then be built on the event
loop (for ``asyncdb``), where Django's ``connection`` would be a new object for each request.
The statements run on the caller's ``connection``.

Below Django's public API (docs/internals.md; tests/test_internals.py checks each):
``Model._meta.concrete_fields``, ``.db_table`` and ``.pk``; ``connection.ops.quote_name``;
``Model._state`` (documented, though underscored), set as ``bulk_create`` sets it;
``ConnectionHandler.create_connection`` and ``Field.cast_db_type`` (undocumented).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import AutoField, Field, Model

from . import orm
from .orm import Addition


@cache
def adapter() -> BaseDatabaseWrapper:
    """A connection object of the default database that never connects: it quotes names and
    adapts values (``ops``, ``get_db_prep_save``) alike for every thread and task."""
    return connections.create_connection(DEFAULT_DB_ALIAS)


@cache
def written_by_sql(model: type[Model]) -> bool:
    """Whether every field's value comes from Python (else ``orm`` writes the model)."""
    return not any(
        # has_db_default() is Django's (5.0+), not in django-stubs yet.
        field.generated or field.has_db_default()  # type: ignore[attr-defined]
        for field in concrete_fields(model)
    )


@cache
def concrete_fields(model: type[Model]) -> tuple[Field, ...]:
    return tuple(model._meta.concrete_fields)


@cache
def insert_fields(
    model: type[Model], without: str | None = None, chained: str | None = None
) -> tuple[Field, ...]:
    """The fields an insert writes: every concrete one but an auto-incremented key (as
    ``bulk_create`` for rows without a key), and but ``without`` and ``chained`` (links the
    statement fills)."""
    return tuple(
        field
        for field in concrete_fields(model)
        if not isinstance(field, AutoField) and field.name not in (without, chained)
    )


def quote(name: str) -> str:
    return adapter().ops.quote_name(name)


def table(model: type[Model]) -> str:
    return quote(model._meta.db_table)


def column_list(fields: Iterable[Field]) -> str:
    return ", ".join(quote(field.column) for field in fields)


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def built(
    model: type[Model], row: Mapping[str, Any], fields: tuple[Field, ...]
) -> tuple[Model, list[Any]]:
    """The instance ``row`` makes and its values for ``fields``, adapted as the ORM adapts them
    on insert. An unknown field name raises TypeError, as the model's constructor does."""
    instance = model(**row)
    wrapper = adapter()
    return instance, [
        field.get_db_prep_save(field.pre_save(instance, True), wrapper) for field in fields
    ]


def saved(instance: Model, pk: Any) -> Model:
    """The instance as ``bulk_create`` leaves it: its key set, marked as in the database."""
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = DEFAULT_DB_ALIAS
    return instance


@cache
def insert_sql(model: type[Model], rows: int) -> str:
    fields = insert_fields(model)
    row = f"({placeholders(len(fields))})"
    return (
        f"INSERT INTO {table(model)} ({column_list(fields)}) "
        f"VALUES {', '.join([row] * rows)} RETURNING {quote(model._meta.pk.column)}"
    )


def insert_rows(model: type[Model], rows: Sequence[Mapping[str, Any]]) -> list:
    if not written_by_sql(model):
        return orm.insert_rows(model, rows)
    if not rows:
        return []
    fields = insert_fields(model)
    instances, params = [], []
    for row in rows:
        instance, values = built(model, row, fields)
        instances.append(instance)
        params += values
    with connection.cursor() as cursor:
        cursor.execute(insert_sql(model, len(rows)), params)
        pks = [pk for (pk,) in cursor.fetchall()]
    return [saved(instance, pk) for instance, pk in zip(instances, pks, strict=True)]


def insert_with_children(
    parent: type[Model],
    values: Mapping[str, Any],
    child: type[Model],
    children: Sequence[Mapping[str, Any]],
    *,
    chain: str | None = None,
) -> tuple[Any, list]:
    if not (written_by_sql(parent) and written_by_sql(child)):
        return orm.insert_with_children(parent, values, child, children, chain=chain)
    if not children:
        return insert_rows(parent, [values])[0], []
    prepared_insert = insert_with_children_prepared(parent, values, child, children, chain=chain)
    with connection.cursor() as cursor:
        cursor.execute(prepared_insert.sql, prepared_insert.params)
        return prepared_insert.saved(cursor.fetchall())


@dataclass(frozen=True)
class PreparedInsert:
    """A statement and its parameters, to run on any connection (``asyncdb``'s on the event
    loop too), and what makes the saved instances of the rows it returns."""

    sql: str
    params: list[Any]
    saved: Callable[[Sequence[Sequence[Any]]], tuple[Any, list]]


def insert_with_children_prepared(
    parent: type[Model],
    values: Mapping[str, Any],
    child: type[Model],
    children: Sequence[Mapping[str, Any]],
    *,
    chain: str | None = None,
) -> PreparedInsert:
    """insert_with_children's one statement (both models written by SQL, some children);
    given ``chain`` (a field of ``child`` pointing to ``child``), each child points to the one
    before it, the first to none."""
    link = orm.link_to(child, parent)
    parent_instance, params = built(parent, values, insert_fields(parent))
    child_fields = insert_fields(child, without=link.name, chained=chain)
    instances = []
    for row in children:
        instance, child_values = built(child, {**row, link.name: parent_instance}, child_fields)
        instances.append(instance)
        params += child_values
    if chain is None:
        sql = insert_with_children_sql(parent, child, len(children))
    else:
        sql = insert_chain_sql(child, len(children), chain, parent)
        params.append(None)

    def made(returned: Sequence[Sequence[Any]]) -> tuple[Any, list]:
        rows = sorted(tuple(row) for row in returned)
        saved(parent_instance, rows[0][1])
        previous = None
        for instance, (pk, _) in zip(instances, rows, strict=True):
            setattr(instance, link.name, parent_instance)  # its key now, and still its object
            if chain is not None:
                setattr(instance, orm.attname(child, chain), previous)
            saved(instance, pk)
            previous = pk
        return parent_instance, instances

    return PreparedInsert(sql, params, made)


def insert_chain(
    model: type[Model], rows: Sequence[Mapping[str, Any]], *, chain: str, first: Any
) -> list:
    """insert_rows, each row's ``chain`` field pointing to the row before it and the first
    row's to ``first`` (a key, or None): one statement, the keys drawn from the table's
    sequence inside it."""
    if not written_by_sql(model):
        return orm.insert_chain(model, rows, chain=chain, first=first)
    if not rows:
        return []
    fields = insert_fields(model, chained=chain)
    instances, params = [], []
    for row in rows:
        instance, values = built(model, row, fields)
        instances.append(instance)
        params += values
    params.append(first)
    with connection.cursor() as cursor:
        cursor.execute(insert_chain_sql(model, len(rows), chain, None), params)
        pks = sorted(pk for (pk, *_) in cursor.fetchall())
    previous = first
    for instance, pk in zip(instances, pks, strict=True):
        setattr(instance, orm.attname(model, chain), previous)
        saved(instance, pk)
        previous = pk
    return instances


@cache
def insert_chain_sql(model: type[Model], rows: int, chain: str, parent: type[Model] | None) -> str:
    """The keys are taken from the table's sequence first (ascending in the rows' order), so
    each row can name the one before it; the first row's ``chain`` is the last parameter.
    With ``parent``, its row is inserted first (the parameters start with its values) and
    each row points to it through its link."""
    pk = quote(model._meta.pk.column)
    chain_column = quote(orm.concrete_field(model, chain).column)
    link = orm.link_to(model, parent) if parent is not None else None
    fields = insert_fields(model, without=link.name if link else None, chained=chain)
    aliases = ", ".join(f"v{index}" for index in range(len(fields)))
    sequence = f"pg_get_serial_sequence('{table(model)}', '{model._meta.pk.column}')"
    prefix, source, link_column, link_value, returning = "WITH ", "", "", "", pk
    if parent is not None and link is not None:
        parent_fields = insert_fields(parent)
        prefix = (
            f"WITH parent AS (INSERT INTO {table(parent)} ({column_list(parent_fields)}) "
            f"VALUES ({placeholders(len(parent_fields))}) "
            f"RETURNING {quote(parent._meta.pk.column)} AS pk), "
        )
        source = "parent CROSS JOIN "
        link_column = f"{quote(link.column)}, "
        link_value = "parent.pk, "
        returning = f"{pk}, {quote(link.column)}"
    # Typed: a VALUES list infers its columns' types from its values, and takes NULLs as text.
    # Field.cast_db_type is Django's own (what Cast uses), undocumented, not in the stubs.
    row = ", ".join(
        f"CAST(%s AS {field.cast_db_type(adapter())})"  # type: ignore[attr-defined]
        for field in fields
    )
    return (
        f"{prefix}keys AS (SELECT row_number() OVER (ORDER BY key) AS position, key "
        f"FROM (SELECT nextval({sequence}) AS key FROM generate_series(1, {rows})) AS drawn) "
        f"INSERT INTO {table(model)} ({pk}, {link_column}{chain_column}, "
        f"{column_list(fields)}) "
        f"SELECT keys.key, {link_value}COALESCE(previous.key, first.key), {aliases} "
        f"FROM {source}"
        f"(VALUES {', '.join(f'({position}, {row})' for position in range(1, rows + 1))}) "
        f"AS v(position, {aliases}) "
        f"JOIN keys ON keys.position = v.position "
        f"LEFT JOIN keys AS previous ON previous.position = v.position - 1 "
        f"CROSS JOIN (SELECT %s::bigint AS key) AS first "
        f"ORDER BY v.position RETURNING {returning}"
    )


@cache
def insert_with_children_sql(parent: type[Model], child: type[Model], rows: int) -> str:
    """The parent's INSERT in a WITH, the children's rows each taking its key; children's
    keys are drawn in the order of their rows."""
    link = orm.link_to(child, parent)
    parent_fields = insert_fields(parent)
    child_fields = insert_fields(child, without=link.name)
    row = f"((SELECT pk FROM parent), {placeholders(len(child_fields))})"
    return (
        f"WITH parent AS (INSERT INTO {table(parent)} ({column_list(parent_fields)}) "
        f"VALUES ({placeholders(len(parent_fields))}) "
        f"RETURNING {quote(parent._meta.pk.column)} AS pk) "
        f"INSERT INTO {table(child)} ({quote(link.column)}, {column_list(child_fields)}) "
        f"VALUES {', '.join([row] * rows)} "
        f"RETURNING {quote(child._meta.pk.column)}, {quote(link.column)}"
    )


@cache
def fields_named(model: type[Model], names: tuple[str, ...]) -> tuple[Field, ...]:
    return tuple(orm.concrete_field(model, name) for name in names)


def prepared(model: type[Model], values: Mapping[str, Any]) -> list:
    """``values`` adapted by their fields, as ``QuerySet.update`` and ``filter`` adapt them."""
    fields = fields_named(model, tuple(values))
    wrapper = adapter()
    return [
        field.get_db_prep_save(value, wrapper)
        for field, value in zip(fields, values.values(), strict=True)
    ]


@cache
def update_sql(model: type[Model], names: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """``UPDATE`` the fields ``names`` of the rows whose fields ``keys`` equal given values."""
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields_named(model, names))
    condition = " AND ".join(f"{quote(f.column)} = %s" for f in fields_named(model, keys))
    return f"UPDATE {table(model)} SET {assignments} WHERE {condition}"


def update_rows(model: type[Model], values: Mapping[str, Any], where: Mapping[str, Any]) -> int:
    params = prepared(model, values) + prepared(model, where)
    with connection.cursor() as cursor:
        cursor.execute(update_sql(model, tuple(values), tuple(where)), params)
        return int(cursor.rowcount)


def update_with_parent(
    model: type[Model],
    values: Mapping[str, Any],
    where: Mapping[str, Any],
    link: str,
    parent_values: Mapping[str, Any],
    *,
    addition: Addition | None = None,
) -> int:
    """update_rows, and in the same statement set ``parent_values`` on the rows the updated
    ones point to through ``link`` and, given an ``addition``, add to its row, once if a row
    was updated and not at all if none was."""
    parent = related_model(model, link)
    params = prepared(model, values) + prepared(model, where) + prepared(parent, parent_values)
    added = None
    if addition is not None:
        added = (addition.model, tuple(addition.keys), tuple(addition.amounts))
        params += prepared(addition.model, {**addition.keys, **addition.amounts})
    sql = update_with_parent_sql(
        model, tuple(values), tuple(where), link, tuple(parent_values), added
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        [(updated,)] = cursor.fetchall()
    return int(updated)


def related_model(model: type[Model], link: str) -> type[Model]:
    related = model._meta.get_field(link).related_model
    if not isinstance(related, type):
        raise TypeError(f"{model.__name__}.{link} does not point to a model")
    return related


@cache
def update_with_parent_sql(
    model: type[Model],
    names: tuple[str, ...],
    keys: tuple[str, ...],
    link: str,
    parent_names: tuple[str, ...],
    added: tuple[type[Model], tuple[str, ...], tuple[str, ...]] | None = None,
) -> str:
    field = orm.concrete_field(model, link)
    parent = related_model(model, link)
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields_named(parent, parent_names))
    addition = ""
    if added is not None:
        counter, counter_keys, amounts = added
        fields = fields_named(counter, counter_keys + amounts)
        # Typed, as a SELECT list gives its parameters no type of their own to take.
        # Field.cast_db_type is Django's own (what Cast uses), undocumented, not in the stubs.
        casts = [f.cast_db_type(adapter()) for f in fields]  # type: ignore[attr-defined]
        typed = ", ".join(f"CAST(%s AS {cast})" for cast in casts)
        addition = (
            f", added AS (INSERT INTO {table(counter)} ({column_list(fields)}) "
            f"SELECT {typed} FROM updated {on_conflict_add(counter, counter_keys, amounts)})"
        )
    return (
        f"WITH updated AS ({update_sql(model, names, keys)} RETURNING {quote(field.column)}), "
        f"parent AS (UPDATE {table(parent)} SET {assignments} "
        f"WHERE {quote(parent._meta.pk.column)} IN (SELECT {quote(field.column)} FROM updated))"
        f"{addition} SELECT count(*) FROM updated"
    )


def add_to_row(addition: Addition) -> None:
    """``INSERT`` the row, or add the amounts to the columns of the one already there."""
    model, keys, amounts = addition.model, tuple(addition.keys), tuple(addition.amounts)
    params = prepared(model, {**addition.keys, **addition.amounts})
    with connection.cursor() as cursor:
        cursor.execute(add_to_row_sql(model, keys, amounts), params)


@cache
def add_to_row_sql(model: type[Model], keys: tuple[str, ...], amounts: tuple[str, ...]) -> str:
    fields = fields_named(model, keys + amounts)
    return (
        f"INSERT INTO {table(model)} ({column_list(fields)}) "
        f"VALUES ({placeholders(len(fields))}) {on_conflict_add(model, keys, amounts)}"
    )


def on_conflict_add(model: type[Model], keys: tuple[str, ...], amounts: tuple[str, ...]) -> str:
    key_columns = [quote(f.column) for f in fields_named(model, keys)]
    sums = ", ".join(
        f"{column} = {table(model)}.{column} + EXCLUDED.{column}"
        for column in (quote(f.column) for f in fields_named(model, amounts))
    )
    return f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {sums}"
