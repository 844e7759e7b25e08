"""``Idempotency-Key``: a POST that a client sends again (a retry after a timeout, a double
click) attaches to the reply the first one started instead of calling the model twice.

A key is the caller's own (keys of different users never meet) and lives for 24 hours. The
first request claims it atomically (Redis ``SET NX`` with REDIS_URL, shared by every worker;
a dictionary of this process otherwise) with the digest of its body, then records its reply's
id. A request with the same key and the same body gets that reply; with another body,
Mismatch (``idempotency_key_reused``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict

from django.conf import settings
from redis.exceptions import RedisError

from ..errors import Mismatch, Unavailable
from ..redis_client import key_prefix, redis_client
from ..services import ChatRequest

KEEP_SECONDS = 24 * 3600
WAIT_SECONDS = 10.0
"""How long a repeated request waits for the first to have opened its reply."""
POLL_SECONDS = 0.05
PENDING = "pending"

_local: dict[str, tuple[float, str]] = {}


def request_digest(chat_request: ChatRequest) -> str:
    body = json.dumps(asdict(chat_request), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def _storage_key(user_id: int, key: str) -> str:
    return f"{key_prefix()}:idempotency:{user_id}:{hashlib.sha256(key.encode()).hexdigest()}"


async def key_aclaim(*, user_id: int, key: str, chat_request: ChatRequest) -> int | None:
    """None if this request is the key's first (it must then ``key_arecord`` its reply or
    ``key_arelease`` the key); else the id of the reply the first one started. Mismatch if the
    key was used with another body; Unavailable if Redis cannot be reached."""
    storage_key = _storage_key(user_id, key)
    digest = request_digest(chat_request)
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while True:
            if await _set_if_absent(storage_key, f"{digest}:{PENDING}"):
                return None
            value = await _get(storage_key)
            if value is not None:
                claimed_digest, _, message_id = value.partition(":")
                if claimed_digest != digest:
                    raise Mismatch(
                        "idempotency_key_reused",
                        "This Idempotency-Key was used with another request body.",
                    )
                if message_id != PENDING:
                    return int(message_id)
            if time.monotonic() >= deadline:
                raise Unavailable(
                    "idempotency_pending",
                    "The first request with this Idempotency-Key is still starting; try again.",
                    retry_after=1,
                )
            await asyncio.sleep(POLL_SECONDS)
    except (RedisError, OSError) as error:
        raise Unavailable(
            "idempotency_unavailable",
            "The service cannot check the Idempotency-Key right now; try again shortly.",
            retry_after=5,
        ) from error


async def key_arecord(
    *, user_id: int, key: str, chat_request: ChatRequest, message_id: int
) -> None:
    """The reply the key's first request started."""
    value = f"{request_digest(chat_request)}:{message_id}"
    storage_key = _storage_key(user_id, key)
    if settings.REDIS_URL:
        await redis_client().set(storage_key, value, xx=True, keepttl=True)
    else:
        _local[storage_key] = (_local[storage_key][0], value)


async def key_arelease(*, user_id: int, key: str) -> None:
    """Forget a key whose first request started no reply, so that it can be tried again."""
    storage_key = _storage_key(user_id, key)
    if settings.REDIS_URL:
        await redis_client().delete(storage_key)
    else:
        _local.pop(storage_key, None)


async def _set_if_absent(storage_key: str, value: str) -> bool:
    if settings.REDIS_URL:
        return bool(await redis_client().set(storage_key, value, nx=True, ex=KEEP_SECONDS))
    now = time.monotonic()
    kept = _local.get(storage_key)
    if kept is not None and kept[0] > now:
        return False
    if len(_local) > 100_000:
        for stale in [k for k, (expires, _) in _local.items() if expires <= now]:
            del _local[stale]
    _local[storage_key] = (now + KEEP_SECONDS, value)
    return True


async def _get(storage_key: str) -> str | None:
    if settings.REDIS_URL:
        value = await redis_client().get(storage_key)
        return value.decode() if value is not None else None
    kept = _local.get(storage_key)
    return kept[1] if kept is not None and kept[0] > time.monotonic() else None
