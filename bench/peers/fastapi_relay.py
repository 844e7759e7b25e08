"""Peer: what many would pick instead, FastAPI + sse-starlette + the openai SDK."""

import json
import os

from fastapi import FastAPI
from openai import AsyncOpenAI
from sse_starlette.sse import EventSourceResponse

client = AsyncOpenAI(api_key="bench", base_url=os.environ["OPENAI_BASE_URL"], max_retries=0)
completions = client.chat.completions
app = FastAPI()


async def events(message: str):
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
                    yield {"id": str(sequence), "data": json.dumps(choice.delta.content)}
        yield {"id": str(sequence + 1), "data": "[DONE]"}
    finally:
        await stream.close()


@app.get("/api/chat/stream")
async def chat_stream(message: str):
    return EventSourceResponse(events(message), ping=15, headers={"X-Accel-Buffering": "no"})
