"""The offline default: a clearly labelled demo reply, streamed word by word at a model's pace."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Sequence

from .base import ChatMessage, ChatProvider, StreamOutcome

DEMO_REPLY = """\
**This is the offline demo model**, not a real language model. It streams this fixed \
reply so that you can try the site with no API key.

You said: “{question}”

To get real answers, point the site at an OpenAI-compatible API and restart it:

```sh
CHAT_PROVIDER=openai OPENAI_API_KEY=sk-... CHAT_MODEL=gpt-4o-mini make run
```

For a local model (Ollama, vLLM, llama.cpp server, LM Studio) also set `OPENAI_BASE_URL`, \
for example `http://127.0.0.1:11434/v1`. Everything else — streaming, saving, stopping — \
works the same. Grüße, ¡hola! and 你好 👋"""

DEMO_TITLE = "Demo conversation"

_WORDS = re.compile(r"\S+\s*|\s+")


class DemoProvider(ChatProvider):
    def __init__(self, *, model: str = "demo", tokens_per_second: float = 30.0) -> None:
        self.model = model
        self.interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0

    async def stream(
        self, messages: Sequence[ChatMessage], outcome: StreamOutcome, *, model: str | None = None
    ) -> AsyncGenerator[str, None]:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        reply = DEMO_REPLY.format(question=" ".join(question.split())[:200])
        words = _WORDS.findall(reply)
        outcome.prompt_tokens = sum(len(m["content"].split()) for m in messages)
        for word in words:
            await asyncio.sleep(self.interval)
            yield word
        outcome.completion_tokens = len(words)
        outcome.finish_reason = "stop"

    async def title(self, first_message: str, *, timeout: float) -> str:
        return DEMO_TITLE
