"""A fake OpenAI-compatible Chat Completions server: real HTTP on loopback, scripted per prompt.

A test scripts a reply for a trigger text (the last user message of the prompt), then reads back
what the upstream received, what it sent and when, and whether the client aborted the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from dataclasses import dataclass, field

DEFAULT_TOKENS = ["Hello", ",", " world", "!"]


@dataclass
class Script:
    tokens: list[str] = field(default_factory=lambda: list(DEFAULT_TOKENS))
    first_token_delay: float = 0.0
    interval: float = 0.0
    status: int = 200
    error_body: dict | None = None
    cut_after: int | None = None
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = (11, 7)
    linger_after_done: float = 0.0
    """Seconds between ``data: [DONE]`` and the end of the body."""
    set_cookie: str | None = None
    completion: str | None = None
    """The answer to a non-streaming request (``"stream": false``); default: the tokens joined."""
    completion_status: int | None = None
    """The status of a non-streaming request's answer; default: ``status``."""
    completion_delay: float = 0.0
    """Seconds before a non-streaming request is answered."""


@dataclass
class UpstreamRequest:
    path: str
    headers: dict[str, str]
    body: dict
    script: Script
    started_at: float
    token_times: list[float] = field(default_factory=list)
    finished_at: float | None = None
    aborted_at: float | None = None

    @property
    def trigger(self) -> str:
        return last_user_message(self.body)

    @property
    def aborted(self) -> bool:
        return self.aborted_at is not None

    @property
    def streaming(self) -> bool:
        return bool(self.body.get("stream"))


def last_user_message(body: dict) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


class FakeUpstream:
    def __init__(self, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.scripts: dict[str, Script] = {}
        self.requests: list[UpstreamRequest] = []
        self.models: list[str] = ["fake-model"]
        """What ``GET /v1/models`` lists."""
        self.models_status = 200
        """The status of ``GET /v1/models``; not 200: an error body."""
        self.model_list_requests: list[float] = []
        """When each ``GET /v1/models`` came (apart from ``requests``, the Chat Completions)."""
        self.port = 0
        self.connections = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, trigger: str, **kwargs) -> Script:
        script = Script(**kwargs)
        self.scripts[trigger] = script
        return script

    def requests_for(self, trigger: str) -> list[UpstreamRequest]:
        return [r for r in self.requests if r.trigger == trigger]

    def wait_for_request(self, trigger: str, timeout: float = 5.0) -> UpstreamRequest:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests_for(trigger)
            if found:
                return found[-1]
            time.sleep(0.01)
        raise AssertionError(f"the upstream never received a request for {trigger!r}")

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(ready),), name="fake-upstream", daemon=True
        )
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("the fake upstream did not start")

    def stop(self) -> None:
        """Close the port and end every connection still open (their handlers are cancelled)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(5)
            if self._thread.is_alive():
                raise RuntimeError("the fake upstream did not stop")
            self._loop = None

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopped.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection, kept alive after a complete stream as real APIs do."""
        self.connections += 1
        try:
            while await self._serve_one(reader, writer):
                pass
        finally:
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw or b"{}")
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return False
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return await self._list_models(writer, headers)
        script = self.scripts.get(last_user_message(body), Script())
        record = UpstreamRequest(path, headers, body, script, time.monotonic())
        self.requests.append(record)
        watcher = asyncio.ensure_future(self._watch_for_abort(reader, record))
        keep_alive = False
        try:
            keep_alive = await self._respond(writer, record)
        except (ConnectionError, RuntimeError):
            record.aborted_at = record.aborted_at or time.monotonic()
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])
        return keep_alive and not record.aborted

    async def _watch_for_abort(self, reader: asyncio.StreamReader, record: UpstreamRequest) -> None:
        """An end of file or a reset while responding is the client aborting (a cancelled read
        loses no data, so the next request on the connection is read whole). A client that
        closes with our response unread resets the connection."""
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        if record.finished_at is None:
            record.aborted_at = time.monotonic()

    async def _respond(self, writer: asyncio.StreamWriter, record: UpstreamRequest) -> bool:
        """Send the scripted response; True if it ended so that the connection can be reused."""
        script = record.script
        if record.headers.get("authorization") != f"Bearer {self.api_key}":
            await self._send_json(writer, 401, invalid_key_body())
            return False
        if not record.streaming:
            return await self._complete(writer, record)
        if script.status != 200:
            body = script.error_body or {"error": {"message": "scripted failure", "type": "server"}}
            await self._send_json(writer, script.status, body)
            return False
        cookie = f"Set-Cookie: {script.set_cookie}\r\n" if script.set_cookie else ""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            + cookie.encode("latin-1")
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        completion_id = f"chatcmpl-{next(self._ids)}"
        model = record.body.get("model", "fake")
        await self._send_chunk(
            writer, chunk(completion_id, model, {"role": "assistant", "content": ""})
        )
        if script.first_token_delay:
            await asyncio.sleep(script.first_token_delay)
        for index, token in enumerate(script.tokens):
            if script.cut_after is not None and index == script.cut_after:
                record.finished_at = time.monotonic()
                return False
            if index and script.interval:
                await asyncio.sleep(script.interval)
            if record.aborted:
                return False
            await self._send_chunk(writer, chunk(completion_id, model, {"content": token}))
            record.token_times.append(time.monotonic())
        await self._send_chunk(writer, chunk(completion_id, model, {}, script.finish_reason))
        if script.usage and record.body.get("stream_options", {}).get("include_usage"):
            prompt_tokens, completion_tokens = script.usage
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            await self._send_chunk(writer, {**chunk(completion_id, model, None), "usage": usage})
        await self._send_raw(writer, b"data: [DONE]\n\n")
        lingered_until = time.monotonic() + script.linger_after_done
        while time.monotonic() < lingered_until and not record.aborted:
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        record.finished_at = time.monotonic()
        await writer.drain()
        return True

    async def _complete(self, writer: asyncio.StreamWriter, record: UpstreamRequest) -> bool:
        """Answer a non-streaming request with one ``chat.completion`` object."""
        script = record.script
        status = script.status if script.completion_status is None else script.completion_status
        if status != 200:
            body = script.error_body or {"error": {"message": "scripted failure", "type": "server"}}
            await self._send_json(writer, status, body)
            record.finished_at = time.monotonic()
            return False
        delayed_until = time.monotonic() + script.completion_delay
        while time.monotonic() < delayed_until and not record.aborted:
            await asyncio.sleep(0.05)
        if record.aborted:
            return False
        content = "".join(script.tokens) if script.completion is None else script.completion
        prompt_tokens, completion_tokens = script.usage or (0, 0)
        body = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": record.body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": script.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        data = json.dumps(body).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        record.finished_at = time.monotonic()
        await writer.drain()
        return True

    async def _list_models(self, writer: asyncio.StreamWriter, headers: dict[str, str]) -> bool:
        """``GET /v1/models``: the scripted list, as OpenAI's API shapes it."""
        self.model_list_requests.append(time.monotonic())
        if headers.get("authorization") != f"Bearer {self.api_key}":
            await self._send_json(writer, 401, invalid_key_body())
            return False
        if self.models_status != 200:
            error = {"error": {"message": "scripted failure", "type": "server"}}
            await self._send_json(writer, self.models_status, error)
            return False
        listed = [
            {"id": name, "object": "model", "created": 0, "owned_by": "fake"}
            for name in self.models
        ]
        data = json.dumps({"object": "list", "data": listed}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        await writer.drain()
        return True

    async def _send_chunk(self, writer: asyncio.StreamWriter, payload: dict) -> None:
        await self._send_raw(writer, b"data: " + json.dumps(payload).encode() + b"\n\n")

    async def _send_raw(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        writer.write(
            b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, len(data), data)
        )
        await writer.drain()


def chunk(
    completion_id: str, model: str, delta: dict | None, finish_reason: str | None = None
) -> dict:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    )
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def invalid_key_body() -> dict:
    return {
        "error": {
            "message": "Incorrect API key provided: sk-secret",
            "type": "invalid_request_error",
        }
    }
