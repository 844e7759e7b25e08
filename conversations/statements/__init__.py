"""The statements every reply makes: insert rows, a parent row with its children, update rows
by key, update rows with their parent. One way to write each, in two implementations that
write the same rows, chosen once per process:

- ``postgresql``: the fast path (CHAT_FAST_PATH=1 on PostgreSQL). Each statement's SQL is built
  once per model and kept; a parent with its children, and rows with their parent, are one
  statement each (a data-modifying WITH: one round trip, no transaction to open and commit).
- ``orm``: Django's ORM (``bulk_create``, ``filter().update()``), with CHAT_FAST_PATH=0 and on
  any other database (SQLite on a fresh machine).

A row is a mapping of field names to values, as a model's constructor takes them; an insert
writes every concrete field of the model, as ``bulk_create`` does: a field a row leaves out
gets its default, and ``auto_now`` fields the time of the insert. So a field added to a model
with a default cannot break an insert that does not name it. Use these inside
``transaction.atomic()`` where several must hold together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection
from django.db.models import Model

from . import orm, postgresql
from .orm import Addition, concrete_field

__all__ = [
    "Addition",
    "add_to_row",
    "concrete_field",
    "implementation",
    "insert_chain",
    "insert_rows",
    "insert_with_children",
    "update_rows",
    "update_with_parent",
]

M = TypeVar("M", bound=Model)
P = TypeVar("P", bound=Model)

Row = Mapping[str, Any]


@cache
def implementation() -> ModuleType:
    """The module whose statements this process runs (settings and database are fixed)."""
    if settings.CHAT_FAST_PATH and connection.vendor == "postgresql":
        return postgresql
    return orm


def insert_rows(model: type[M], rows: Sequence[Row]) -> list[M]:
    """Insert ``rows`` in one statement; the saved instances, in order, with their keys."""
    saved: list[M] = implementation().insert_rows(model, rows)
    return saved


def insert_with_children(
    parent: type[P],
    values: Row,
    child: type[M],
    children: Sequence[Row],
    *,
    chain: str | None = None,
) -> tuple[P, list[M]]:
    """Insert a ``parent`` row and ``children`` rows of ``child`` pointing to it, all or none;
    the saved parent and children, in order (a child's row does not name its parent). Given
    ``chain`` (a field of ``child`` pointing to ``child``), each child points to the one
    before it, and the first to none."""
    saved: tuple[P, list[M]] = implementation().insert_with_children(
        parent, values, child, children, chain=chain
    )
    return saved


def insert_chain(model: type[M], rows: Sequence[Row], *, chain: str, first: Any) -> list[M]:
    """insert_rows, each row's ``chain`` field pointing to the row before it and the first
    row's to the key ``first`` (or None)."""
    saved: list[M] = implementation().insert_chain(model, rows, chain=chain, first=first)
    return saved


def update_rows(model: type[Model], values: Row, where: Row) -> int:
    """``UPDATE … SET values WHERE`` every ``where`` field equals its value; rows changed."""
    updated: int = implementation().update_rows(model, values, where)
    return updated


def update_with_parent(
    model: type[Model],
    values: Row,
    where: Row,
    link: str,
    parent_values: Row,
    *,
    addition: Addition | None = None,
) -> int:
    """update_rows, and set ``parent_values`` on the rows the updated ones point to through
    their field ``link`` and, given an ``addition``, add to its row once if a row was
    updated, all or none; how many ``model`` rows were updated."""
    updated: int = implementation().update_with_parent(
        model, values, where, link, parent_values, addition=addition
    )
    return updated


def add_to_row(addition: Addition) -> None:
    """Add ``addition``'s amounts to its row, inserting it if there is none."""
    implementation().add_to_row(addition)
