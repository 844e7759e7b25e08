"""The owner of a reply's whole life: starting it, the clients that attach to and detach from
it, stopping it from any process, its heartbeat, and settling it when its process died.

- ``reply``: one reply in flight (the producing task, its tokens, its timers, its one save).
- ``running``: the replies of this process, and those it ended lately (for resuming).
- ``control``: stop, cancel, delete; settling replies whose process died.
- ``stops``, ``heartbeats``: what processes tell each other through Redis.
"""

from .control import (
    Attachable,
    conversation_adelete,
    message_acancel,
    messages_interrupt_stale,
    reply_aattach,
    reply_aresume,
    reply_astart_once,
    reply_astop,
)
from .remote import RemoteFrames, RemoteReply
from .reply import Finished, Reply
from .running import reply_astart, reply_find

__all__ = [
    "Attachable",
    "Finished",
    "RemoteFrames",
    "RemoteReply",
    "Reply",
    "conversation_adelete",
    "message_acancel",
    "messages_interrupt_stale",
    "reply_aattach",
    "reply_aresume",
    "reply_astart_once",
    "reply_astart",
    "reply_astop",
    "reply_find",
]
