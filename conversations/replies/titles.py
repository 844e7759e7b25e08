"""Naming a new conversation once its first reply has completed.

The model is asked for a title with a short request of its own, after the reply has ended and
been saved: the reply's stream never waits for it. Until the title is saved, or if the request
fails or takes longer than CHAT_TITLE_TIMEOUT_SECONDS, the conversation keeps its provisional
title (the first words of its first message); a title the owner gave meanwhile is kept.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from django.conf import settings

from ..models import Message
from ..providers import ChatProvider, ProviderError
from ..services import conversation_aset_generated_title
from .reply import Reply

logger = logging.getLogger(__name__)

TITLING: set[asyncio.Task] = set()
"""Title requests under way (a strong reference each, so none is collected mid-way)."""


async def conversation_atitle_when_complete(
    reply: Reply, *, conversation_id: int, first_message: str, provisional: str
) -> None:
    """A reply's end callback: if it completed, ask for a title in a task of its own."""
    if reply.finished is None or reply.finished.status != Message.Status.COMPLETE:
        return
    work = conversation_atitle(
        provider=reply.provider,
        conversation_id=conversation_id,
        first_message=first_message,
        provisional=provisional,
        timeout=settings.CHAT_TITLE_TIMEOUT_SECONDS,
    )
    # A fresh context: nothing of the request's, which has ended, is carried into the task.
    task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
    TITLING.add(task)
    task.add_done_callback(TITLING.discard)


async def conversation_atitle(
    *,
    provider: ChatProvider,
    conversation_id: int,
    first_message: str,
    provisional: str,
    timeout: float,
) -> bool:
    """Ask the model for the conversation's title and save it over the provisional one; False
    (logged) if there is none to save."""
    try:
        async with asyncio.timeout(timeout):
            title = await provider.title(first_message, timeout=timeout)
    except TimeoutError:
        logger.warning("conversation %s: no title within %s s", conversation_id, timeout)
        return False
    except ProviderError as exc:
        logger.warning("conversation %s: no title (%s)", conversation_id, exc.code)
        return False
    except Exception:
        logger.exception("conversation %s: the title request failed", conversation_id)
        return False
    try:
        return await conversation_aset_generated_title(
            conversation_id=conversation_id, provisional=provisional, title=title
        )
    except Exception:
        logger.exception("conversation %s: its title could not be saved", conversation_id)
        return False
