"""Peer: the floor. httpx straight to the upstream, a minimal SSE parser, no SDK objects."""

import json
import os

import httpx
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

URL = os.environ["OPENAI_BASE_URL"].rstrip("/") + "/chat/completions"
client = httpx.AsyncClient(
    timeout=60, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
)


async def frames(message: str):
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": message}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sequence = 0
    buffer = b""
    async with client.stream("POST", URL, json=body) as response:
        async for raw in response.aiter_raw():
            buffer += raw
            *events, buffer = buffer.split(b"\n\n")
            out = []
            for event in events:
                if not event.startswith(b"data: {"):
                    continue
                for choice in json.loads(event[6:])["choices"]:
                    content = choice.get("delta", {}).get("content")
                    if content:
                        sequence += 1
                        out.append(f"id: {sequence}\ndata: {json.dumps(content)}\n\n")
            if out:
                yield "".join(out)
    yield f"id: {sequence + 1}\ndata: [DONE]\n\n"


async def chat_stream(request):
    return StreamingResponse(
        frames(request.query_params["message"]),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


app = Starlette(routes=[Route("/api/chat/stream", chat_stream)])
