"""The statements through Django's ORM: with CHAT_FAST_PATH=0, and on databases other than
PostgreSQL. Public API only; ``postgresql`` writes the same rows faster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction
from django.db.models import Field, Model


def insert_rows(model: type[Model], rows: Sequence[Mapping[str, Any]]) -> list:
    return model._default_manager.bulk_create([model(**row) for row in rows])


def insert_with_children(
    parent: type[Model],
    values: Mapping[str, Any],
    child: type[Model],
    children: Sequence[Mapping[str, Any]],
) -> tuple[Any, list]:
    link = link_to(child, parent)
    with transaction.atomic():
        [saved] = insert_rows(parent, [values])
        return saved, insert_rows(child, [{**row, link.name: saved} for row in children])


def update_rows(model: type[Model], values: Mapping[str, Any], where: Mapping[str, Any]) -> int:
    return model._default_manager.filter(**where).update(**values)


def update_with_parent(
    model: type[Model],
    values: Mapping[str, Any],
    where: Mapping[str, Any],
    link: str,
    parent_values: Mapping[str, Any],
) -> int:
    field = model._meta.get_field(link)
    with transaction.atomic():
        matched = model._default_manager.filter(**where).select_for_update()
        keys = list(matched.values_list("pk", field.attname))
        if not keys:
            return 0
        updated = model._default_manager.filter(pk__in=[pk for pk, _ in keys]).update(**values)
        parents = {parent_pk for _, parent_pk in keys}
        field.related_model._default_manager.filter(pk__in=parents).update(**parent_values)
    return updated


def link_to(child: type[Model], parent: type[Model]) -> Field:
    """``child``'s foreign key to ``parent``."""
    return next(
        field
        for field in child._meta.get_fields()
        if field.many_to_one and field.concrete and field.related_model is parent
    )
