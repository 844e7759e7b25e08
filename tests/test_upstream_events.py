"""The upstream's event stream is read from bytes however the network splits them."""

from __future__ import annotations

import pytest

from conversations.providers import StreamOutcome
from conversations.providers.base import ProviderError
from conversations.providers.events import EventDataReader
from conversations.providers.openai_compatible import deltas

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
    b'data:{"choices": [{"delta": {"content": "b\\n"}}]}\r\n\r\n'
    b"event: ignored\n"
    b'data: {"choices": [{"delta":\n'
    b'data:  {"content": "c"}}]}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_event_data_survives_any_split_of_the_bytes(size):
    reader = EventDataReader()
    events = []
    for start in range(0, len(STREAM), size):
        events.extend(reader.feed(STREAM[start : start + size]))

    assert events == [
        b'{"choices": [{"delta": {"content": "a"}}]}',
        b'{"choices": [{"delta": {"content": "b\\n"}}]}',
        b'{"choices": [{"delta":\n {"content": "c"}}]}',
        b"[DONE]",
    ]


def test_chunk_deltas_skip_empty_content_and_record_finish_and_usage():
    outcome = StreamOutcome()

    first = deltas(b'{"choices": [{"delta": {"role": "assistant", "content": ""}}]}', outcome)
    second = deltas(b'{"choices": [{"delta": {"content": "hi"}, "finish_reason": null}]}', outcome)
    last = deltas(b'{"choices": [{"delta": {}, "finish_reason": "length"}]}', outcome)
    usage = deltas(
        b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}', outcome
    )

    assert (first, second, last, usage) == ([], ["hi"], [], [])
    assert (outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens) == (
        "length", 3, 1,
    )  # fmt: skip


@pytest.mark.parametrize("payload", [b"{not json", b'{"error": {"message": "overloaded"}}'])
def test_malformed_or_error_chunks_raise_a_safe_provider_error(payload):
    with pytest.raises(ProviderError) as caught:
        deltas(payload, StreamOutcome())

    assert caught.value.code == "upstream_error"
    assert "overloaded" not in caught.value.message
