"""The statements through Django's ORM: with CHAT_FAST_PATH=0, and on databases other than
PostgreSQL. Public API only; ``postgresql`` writes the same rows faster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Field, Model


@dataclass(frozen=True)
class Addition:
    """Amounts to add to the row of ``model`` that ``keys`` name (one unique constraint holds
    exactly those fields), inserting it with the amounts if there is none."""

    model: type[Model]
    keys: dict[str, Any]
    amounts: dict[str, Any]


def insert_rows(model: type[Model], rows: Sequence[Mapping[str, Any]]) -> list:
    return model._default_manager.bulk_create([model(**row) for row in rows])


def insert_with_children(
    parent: type[Model],
    values: Mapping[str, Any],
    child: type[Model],
    children: Sequence[Mapping[str, Any]],
    *,
    chain: str | None = None,
) -> tuple[Any, list]:
    link = link_to(child, parent)
    with transaction.atomic():
        [saved] = insert_rows(parent, [values])
        rows = [{**row, link.name: saved} for row in children]
        if chain is None:
            return saved, insert_rows(child, rows)
        return saved, insert_chain(child, rows, chain=chain, first=None)


def insert_chain(
    model: type[Model], rows: Sequence[Mapping[str, Any]], *, chain: str, first: Any
) -> list:
    """Each row inserted after the one before, its ``chain`` field pointing to it (the first
    row's to ``first``)."""
    saved: list = []
    previous = first
    with transaction.atomic():
        for row in rows:
            [instance] = insert_rows(model, [{**row, attname(model, chain): previous}])
            saved.append(instance)
            previous = instance.pk
    return saved


def concrete_field(model: type[Model], name: str) -> Field[Any, Any]:
    """The field ``name`` of ``model`` that has a column (``get_field`` also finds the reverse
    side of a relation, which has none)."""
    field = model._meta.get_field(name)
    if not isinstance(field, Field):
        raise TypeError(f"{model.__name__}.{name} has no column")
    return field


def attname(model: type[Model], name: str) -> str:
    """The attribute holding a foreign key's value (``parent_id`` for ``parent``)."""
    field = model._meta.get_field(name)
    return str(getattr(field, "attname", name))


def update_rows(model: type[Model], values: Mapping[str, Any], where: Mapping[str, Any]) -> int:
    return model._default_manager.filter(**where).update(**values)


def update_with_parent(
    model: type[Model],
    values: Mapping[str, Any],
    where: Mapping[str, Any],
    link: str,
    parent_values: Mapping[str, Any],
    *,
    addition: Addition | None = None,
) -> int:
    field = model._meta.get_field(link)
    related = field.related_model
    if not (isinstance(related, type) and issubclass(related, Model)):
        raise TypeError(f"{model.__name__}.{link} does not point to a model")
    with transaction.atomic():
        matched = model._default_manager.filter(**where).select_for_update()
        keys = list(matched.values_list("pk", str(getattr(field, "attname", link))))
        if not keys:
            return 0
        updated = model._default_manager.filter(pk__in=[pk for pk, _ in keys]).update(**values)
        parents = {parent_pk for _, parent_pk in keys}
        related._default_manager.filter(pk__in=parents).update(**parent_values)
        if addition is not None:
            add_to_row(addition)
    return updated


def add_to_row(addition: Addition) -> None:
    """Add the amounts to the row, or insert it with them if there is none."""
    manager = addition.model._default_manager
    # The keys may give a related row by its key (``user``: an id), as filters take them.
    keys = {attname(addition.model, name): value for name, value in addition.keys.items()}
    increments = {name: F(name) + amount for name, amount in addition.amounts.items()}
    with transaction.atomic():
        if manager.filter(**keys).update(**increments):
            return
        try:
            with transaction.atomic():
                manager.create(**keys, **addition.amounts)
                return
        except IntegrityError:
            pass  # another transaction inserted it meanwhile: add to theirs
        manager.filter(**keys).update(**increments)


def link_to(child: type[Model], parent: type[Model]) -> Field[Any, Any]:
    """``child``'s foreign key to ``parent``."""
    return next(
        field
        for field in child._meta.concrete_fields
        if field.many_to_one and field.related_model is parent
    )
