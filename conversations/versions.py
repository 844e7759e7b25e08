"""A conversation as a tree of versions, and the one path through it that is shown.

Every message has a parent (the message it follows; none for the first). Messages with the same
parent are versions of one turn: a regenerated reply beside the first, an edited message beside
the one it replaces. The conversation shows one path, root to leaf: the leaf is the one a person
picked (``Conversation.current_leaf``) or else the newest message. Picking a version of a turn
shows that version and, below it, the newest of its descendants.

Plain functions over the few columns they need, so the page, the API and the prompt builder
walk the same tree the same way, from rows read once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Node(Protocol):
    """What the tree needs of a message (a Message, or a row read with these columns)."""

    @property
    def pk(self) -> int: ...

    @property
    def parent_id(self) -> int | None: ...


_N = TypeVar("_N", bound=Node)


@dataclass(frozen=True)
class Version:
    """Where a message on the shown path stands among its versions (``index`` from 1)."""

    index: int
    count: int
    previous: int | None
    """The version before this one (its id), if any."""
    next: int | None


class Tree(Generic[_N]):
    """The messages of one conversation, in the order they were written."""

    def __init__(self, messages: Iterable[_N]) -> None:
        self.messages = list(messages)
        self.by_id = {message.pk: message for message in self.messages}
        self.children: dict[int | None, list[_N]] = {}
        for message in self.messages:
            self.children.setdefault(message.parent_id, []).append(message)

    def path(self, leaf_id: int | None = None) -> list[_N]:
        """Root to ``leaf_id`` (the newest message when None or not in the tree)."""
        leaf = self.by_id.get(leaf_id) if leaf_id is not None else None
        if leaf is None:
            if not self.messages:
                return []
            leaf = self.messages[-1]
        path = []
        node: _N | None = leaf
        seen = set()
        while node is not None and node.pk not in seen:
            seen.add(node.pk)
            path.append(node)
            node = self.by_id.get(node.parent_id) if node.parent_id is not None else None
        path.reverse()
        return path

    def path_to(self, message_id: int | None) -> list[_N]:
        """Root to ``message_id``; nothing for None (before the first message)."""
        return [] if message_id is None else self.path(message_id)

    def newest_leaf_below(self, message_id: int) -> int:
        """The leaf reached from ``message_id`` by always taking its newest child."""
        node = self.by_id[message_id]
        while self.children.get(node.pk):
            node = self.children[node.pk][-1]
        return node.pk

    def version(self, message: _N) -> Version:
        siblings = self.children.get(message.parent_id, [message])
        index = next(i for i, sibling in enumerate(siblings) if sibling.pk == message.pk)
        return Version(
            index=index + 1,
            count=len(siblings),
            previous=siblings[index - 1].pk if index > 0 else None,
            next=siblings[index + 1].pk if index + 1 < len(siblings) else None,
        )


def path_with_versions(messages: Sequence[_N], leaf_id: int | None) -> list[tuple[_N, Version]]:
    """The shown path, each message with its place among its versions."""
    tree = Tree(messages)
    return [(message, tree.version(message)) for message in tree.path(leaf_id)]
