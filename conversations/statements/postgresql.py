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

Below Django's public API (docs/internals.md; tests/test_internals.py checks each):
``Model._meta.concrete_fields``, ``.db_table`` and ``.pk``; ``connection.ops.quote_name``;
``Model._state`` (documented, though underscored), set as ``bulk_create`` sets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import AutoField, Field, Model

from . import orm


@cache
def written_by_sql(model: type[Model]) -> bool:
    """Whether every field's value comes from Python (else ``orm`` writes the model)."""
    return not any(field.generated or field.has_db_default() for field in concrete_fields(model))


@cache
def concrete_fields(model: type[Model]) -> tuple[Field, ...]:
    return tuple(model._meta.concrete_fields)


@cache
def insert_fields(model: type[Model], without: str | None = None) -> tuple[Field, ...]:
    """The fields an insert writes: every concrete one but an auto-incremented key (as
    ``bulk_create`` for rows without a key), and but ``without`` (a link the statement fills)."""
    return tuple(
        field
        for field in concrete_fields(model)
        if not isinstance(field, AutoField) and field.name != without
    )


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


def table(model: type[Model]) -> str:
    return quote(model._meta.db_table)


def column_list(fields: Iterable[Field]) -> str:
    return ", ".join(quote(field.column) for field in fields)


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def built(model: type[Model], row: Mapping[str, Any], fields: tuple[Field, ...]):
    """The instance ``row`` makes and its values for ``fields``, adapted as the ORM adapts them
    on insert. An unknown field name raises TypeError, as the model's constructor does."""
    instance = model(**row)
    return instance, [
        field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields
    ]


def saved(instance: Model, pk: Any) -> Model:
    """The instance as ``bulk_create`` leaves it: its key set, marked as in the database."""
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = connection.alias
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
) -> tuple[Any, list]:
    if not (written_by_sql(parent) and written_by_sql(child)):
        return orm.insert_with_children(parent, values, child, children)
    if not children:
        return insert_rows(parent, [values])[0], []
    link = orm.link_to(child, parent)
    parent_instance, params = built(parent, values, insert_fields(parent))
    child_fields = insert_fields(child, without=link.name)
    instances = []
    for row in children:
        instance, child_values = built(child, {**row, link.name: parent_instance}, child_fields)
        instances.append(instance)
        params += child_values
    with connection.cursor() as cursor:
        cursor.execute(insert_with_children_sql(parent, child, len(children)), params)
        returned = sorted(cursor.fetchall())
    parent_pk = returned[0][1]
    saved(parent_instance, parent_pk)
    for instance, (pk, _) in zip(instances, returned, strict=True):
        setattr(instance, link.name, parent_instance)  # its key now, and still its object
        saved(instance, pk)
    return parent_instance, instances


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
    return tuple(model._meta.get_field(name) for name in names)


def prepared(model: type[Model], values: Mapping[str, Any]) -> list:
    """``values`` adapted by their fields, as ``QuerySet.update`` and ``filter`` adapt them."""
    fields = fields_named(model, tuple(values))
    return [
        field.get_db_prep_save(value, connection)
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
        return cursor.rowcount


def update_with_parent(
    model: type[Model],
    values: Mapping[str, Any],
    where: Mapping[str, Any],
    link: str,
    parent_values: Mapping[str, Any],
) -> int:
    parent = model._meta.get_field(link).related_model
    params = prepared(model, values) + prepared(model, where) + prepared(parent, parent_values)
    sql = update_with_parent_sql(model, tuple(values), tuple(where), link, tuple(parent_values))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        [(updated,)] = cursor.fetchall()
    return updated


@cache
def update_with_parent_sql(
    model: type[Model],
    names: tuple[str, ...],
    keys: tuple[str, ...],
    link: str,
    parent_names: tuple[str, ...],
) -> str:
    field = model._meta.get_field(link)
    parent = field.related_model
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields_named(parent, parent_names))
    return (
        f"WITH updated AS ({update_sql(model, names, keys)} RETURNING {quote(field.column)}), "
        f"parent AS (UPDATE {table(parent)} SET {assignments} "
        f"WHERE {quote(parent._meta.pk.column)} IN (SELECT {quote(field.column)} FROM updated)) "
        f"SELECT count(*) FROM updated"
    )
