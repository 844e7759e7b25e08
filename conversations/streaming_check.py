"""Is something between the site and its readers spoiling the streams? Read the diagnostics
stream (``conversations.diagnostics``) as a browser reads a reply, and say in plain words
whether frames arrive in bursts (a buffering proxy), compressed (``Content-Encoding``), or
cut off by a silence (an idle timeout), with the spacing measured.

``manage.py check_streaming`` prints ``StreamingCheck.report()``; nothing here needs Django.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx

PATH = "/api/diagnostics/stream"
BROWSER_HEADERS = {
    "Accept": "text/event-stream",
    "Accept-Encoding": "gzip, br",
    "Cache-Control": "no-cache",
    "User-Agent": "chatsite check_streaming",
}
"""What a browser's EventSource or fetch sends for a stream: a proxy that compresses for
browsers compresses for this too."""

COLLAPSED = 0.25
"""Two ticks sent ``interval`` apart that arrive less than a quarter of that apart came
together: the later one was held back until the earlier was let through."""
SLACK_SECONDS = 30.0
"""How much longer than the stream should take the client waits for a byte."""


class CheckFailed(Exception):
    """The stream could not be read at all (no answer, an error status, not a stream)."""


@dataclass(frozen=True)
class Tick:
    seq: int
    sent_ms: float
    """When it left the server, since the first tick left (the server's clock)."""
    received_ms: float
    """When it was read here, since the request was sent (this machine's clock)."""


@dataclass(frozen=True)
class Spacing:
    """How the ticks arrived compared with how they left."""

    frames: int
    sent_ms: float
    """Median time between ticks leaving the server."""
    received_ms: float
    """Median time between ticks arriving here."""
    bursts: int
    """Groups of ticks that arrived together (each tick alone when nothing holds them)."""
    held_ms: float
    """The longest any tick took to arrive beyond the quickest one's time on the way."""

    @property
    def buffered(self) -> bool:
        """At least half the ticks arrived together with the one before them."""
        return self.frames >= 2 and self.bursts * 2 <= self.frames


def tick_spacing(ticks: Sequence[Tick]) -> Spacing:
    """Compare the arrival spacing of ``ticks`` (two at least) with their send spacing."""
    pairs = list(zip(ticks, ticks[1:], strict=False))
    sent_gaps = [later.sent_ms - earlier.sent_ms for earlier, later in pairs]
    received_gaps = [later.received_ms - earlier.received_ms for earlier, later in pairs]
    together = sum(
        1 for sent, received in zip(sent_gaps, received_gaps, strict=True)
        if received < sent * COLLAPSED
    )  # fmt: skip
    on_the_way = [tick.received_ms - tick.sent_ms for tick in ticks]
    return Spacing(
        frames=len(ticks),
        sent_ms=statistics.median(sent_gaps),
        received_ms=statistics.median(received_gaps),
        bursts=len(ticks) - together,
        held_ms=max(on_the_way) - min(on_the_way),
    )


@dataclass
class StreamingCheck:
    """What reading one diagnostics stream showed."""

    url: str
    count: int
    interval_ms: int
    idle_seconds: int
    content_encoding: str = ""
    ticks: list[Tick] = field(default_factory=list)
    idle_announced: bool = False
    ended: bool = False
    silence_ms: float = 0.0
    """How long nothing arrived before the body ended (cut or whole)."""
    longest_gap_ms: float = 0.0
    """The longest time between two frames."""
    keepalive_seconds: float | None = None
    unreadable: bool = False
    """Compressed in a way this client cannot decode: no frame could be read."""

    @property
    def spacing(self) -> Spacing | None:
        return tick_spacing(self.ticks) if len(self.ticks) >= 2 else None

    @property
    def buffered(self) -> bool:
        spacing = self.spacing
        return spacing is not None and spacing.buffered

    @property
    def compressed(self) -> bool:
        return self.content_encoding not in ("", "identity")

    @property
    def cut(self) -> bool:
        return not self.ended and not self.unreadable

    def findings(self) -> list[str]:
        """The problems found, by name: ``buffered``, ``compressed``, ``cut``."""
        names = [("buffered", self.buffered), ("compressed", self.compressed), ("cut", self.cut)]
        return [name for name, found in names if found]

    def report(self) -> list[str]:
        """The result in plain words, one line each; the last says ``Result: ok`` or names
        the problems found."""
        lines = [
            f"Read {self.url}: {self.count} frames sent {self.interval_ms} ms apart"
            + (f", then {self.idle_seconds} s of silence." if self.idle_seconds else ".")
        ]
        lines.append(self._spacing_line())
        lines.append(self._compression_line())
        lines.append(self._idle_line())
        findings = self.findings()
        lines.append(f"Result: {', '.join(findings) if findings else 'ok'}")
        return lines

    def _spacing_line(self) -> str:
        if self.unreadable:
            return (
                f"Spacing: not measured: the stream came compressed ({self.content_encoding}) "
                "in a way this client cannot decode."
            )
        spacing = self.spacing
        if spacing is None:
            return f"Spacing: not measured: {len(self.ticks)} frame(s) arrived."
        grouping = (
            "each on its own"
            if spacing.bursts == spacing.frames
            else f"in {spacing.bursts} burst(s) for {spacing.frames} frames"
        )
        measured = (
            f"sent {spacing.sent_ms:.0f} ms apart, they arrived {spacing.received_ms:.0f} ms "
            f"apart (medians), {grouping}; the longest a frame was held on the way: "
            f"{spacing.held_ms:.0f} ms."
        )
        if not spacing.buffered:
            return f"Spacing: ok: {measured}"
        return (
            f"Spacing: buffered: something between the site and this client holds frames back "
            f"and lets them through in bursts, so replies appear in lumps or all at once at "
            f"the end: {measured} Turn response buffering off for the stream paths (nginx: "
            "`proxy_buffering off`, as deploy/nginx.conf does; the site also sends "
            "`X-Accel-Buffering: no`, which nginx obeys unless it ignores that header)."
        )

    def _compression_line(self) -> str:
        if not self.compressed:
            return "Compression: none."
        return (
            f"Compression: compressed (Content-Encoding: {self.content_encoding}): a compressor "
            "waits for more bytes before it lets a block out, and proxies often buffer what "
            "they compress. Turn compression off for text/event-stream (nginx: `gzip off` on "
            "the stream paths, as deploy/nginx.conf does)."
        )

    def _idle_line(self) -> str:
        silence = self.silence_ms / 1000
        if self.ended:
            if self.idle_seconds:
                return (
                    "Idle connections: ok: the connection stayed open through "
                    f"{self.longest_gap_ms / 1000:.1f} s of silence."
                )
            return "Idle connections: not tested (--idle SECONDS adds a silence that long)."
        if self.unreadable:
            return "Idle connections: not tested."
        keepalive = self.keepalive_seconds
        if self.idle_announced:
            what = (
                f"cut: the connection was closed after {silence:.1f} s without a byte "
                f"(the site was to stay silent {self.idle_seconds} s)"
            )
        else:
            what = (
                f"cut: the stream ended after {len(self.ticks)} of {self.count} frames, "
                f"{silence:.1f} s after the last byte"
            )
        if keepalive is None:
            return f"Idle connections: {what}."
        verdict = (
            "longer than the site's keep-alive interval, so reply streams stay open (their "
            "`: ping` comes first); other long silences do not"
            if silence > keepalive
            else "no longer than the site's keep-alive interval: reply streams waiting for a "
            "slow model will be cut"
        )
        return (
            f"Idle connections: {what}; that is {verdict} (CHAT_KEEPALIVE_SECONDS is "
            f"{keepalive:g}). Raise the proxy's read timeout for the stream paths (nginx: "
            "`proxy_read_timeout`)."
        )


def diagnostics_url(site_url: str) -> str:
    return site_url.rstrip("/") + PATH


def streaming_check(
    *,
    site_url: str,
    token: str | None = None,
    count: int = 10,
    interval_ms: int = 200,
    idle_seconds: int = 0,
) -> StreamingCheck:
    """Read the diagnostics stream of the site at ``site_url`` (as a staff user's ``token``
    when given) and note when each frame arrived; CheckFailed if it cannot be read at all."""
    url = diagnostics_url(site_url)
    check = StreamingCheck(url, count, interval_ms, idle_seconds)
    headers = dict(BROWSER_HEADERS)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    longest_wait = count * interval_ms / 1000 + idle_seconds + SLACK_SECONDS
    timeout = httpx.Timeout(10.0, read=longest_wait)
    params = {"count": count, "interval_ms": interval_ms, "idle_seconds": idle_seconds}
    try:
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", url, params=params, headers=headers) as response,
        ):
            started = time.monotonic()
            _check_answer(response)
            check.content_encoding = response.headers.get("Content-Encoding", "").strip().lower()
            last_byte = started
            for kind, data, received in _events(response):
                if kind is None or received is None:
                    break
                check.longest_gap_ms = max(check.longest_gap_ms, (received - last_byte) * 1000)
                last_byte = received
                _note(check, kind, data, (received - started) * 1000)
            check.silence_ms = (time.monotonic() - last_byte) * 1000
    except httpx.TimeoutException:
        raise CheckFailed(
            f"Nothing arrived from {url} for {longest_wait:.0f} s: something holds the whole "
            "stream (a buffering proxy, with a silence longer than its buffer waits?)."
        ) from None
    except httpx.HTTPError as error:
        raise CheckFailed(f"Could not read {url}: {error}") from None
    if check.compressed and not check.ticks and not check.ended:
        check.unreadable = True
    return check


def _check_answer(response: httpx.Response) -> None:
    if response.status_code != 200:
        response.read()
        try:
            detail = response.json()["error"]["message"].rstrip(".")
        except (ValueError, KeyError, TypeError, AttributeError):
            detail = response.reason_phrase
        hint = {
            401: " Pass --token with an API token of a staff user.",
            403: " The token's user must be staff.",
        }.get(response.status_code, "")
        location = response.headers.get("Location")
        if location:
            hint = f" It points to {location}: check that URL instead."
        raise CheckFailed(f"The site answered {response.status_code}: {detail}.{hint}")
    content_type = response.headers.get("Content-Type", "")
    if not content_type.startswith("text/event-stream"):
        raise CheckFailed(
            f"The answer is {content_type or 'untyped'}, not text/event-stream: is this the "
            "site's address, and is this version of the site serving the diagnostics stream?"
        )


def _events(response: httpx.Response) -> Iterator[tuple[str | None, str, float | None]]:
    """``(event, data, received)`` per SSE frame as it arrives, with the time the bytes that
    completed it were read; ``(None, "", None)`` last, when the body ends (cut or whole)."""
    buffer = ""
    try:
        for chunk in response.iter_text():
            received = time.monotonic()
            buffer += chunk.replace("\r\n", "\n")
            while "\n\n" in buffer:
                raw, buffer = buffer.split("\n\n", 1)
                kind, data = _parse(raw)
                if data is not None:
                    yield kind, data, received
                else:
                    yield "comment", "", received
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the connection was closed before the body's end: a cut
    except httpx.DecodingError:
        pass  # bytes this client cannot decode (see StreamingCheck.unreadable)
    yield None, "", None


def _parse(raw: str) -> tuple[str, str | None]:
    kind, data = "message", []
    for line in raw.split("\n"):
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
    return kind, "\n".join(data) if data else None


def _note(check: StreamingCheck, kind: str, data: str, received_ms: float) -> None:
    if kind == "tick":
        payload = json.loads(data)
        check.keepalive_seconds = payload.get("keepalive_seconds")
        check.ticks.append(Tick(payload["seq"], payload["sent_ms"], received_ms))
    elif kind == "idle":
        check.idle_announced = True
    elif kind == "end":
        check.ended = True
