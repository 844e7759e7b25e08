"""Peer: the leanest idiomatic relay, bare Starlette + the openai SDK (same GET contract)."""

import json
import os

from openai import AsyncOpenAI
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

client = AsyncOpenAI(api_key="bench", base_url=os.environ["OPENAI_BASE_URL"], max_retries=0)
completions = client.chat.completions


async def frames(message: str):
    stream = await completions.create(
        model="bench",
        messages=[{"role": "user", "content": message}],
        stream=True,
        stream_options={"include_usage": True},
    )
    sequence = 0
    try:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    sequence += 1
                    yield f"id: {sequence}\ndata: {json.dumps(choice.delta.content)}\n\n"
        yield f"id: {sequence + 1}\ndata: [DONE]\n\n"
    finally:
        await stream.close()


async def chat_stream(request):
    return StreamingResponse(
        frames(request.query_params["message"]),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


app = Starlette(routes=[Route("/api/chat/stream", chat_stream)])
