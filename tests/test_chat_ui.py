"""The chat page in a real browser: Chromium, uvicorn, the real SDK and the fake upstream."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from conversations.models import Conversation, Message
from tests.helpers import interrupt_once_its_producer_is_gone, session_client, wait_for
from tests.tcp_proxy import CuttableProxy

ARTIFACTS = Path(__file__).parent / "artifacts"
"""Where ``make screenshot`` (UPDATE_SCREENSHOT=1) refreshes the README's screenshot; other
runs write theirs to a temporary directory, so a test run leaves the tree as it found it."""

# The text the last reply shows so far (its ``data-source``: the page renders it as Markdown).
RECORD_STREAMED_TEXT = """() => {
  window.__snapshots = [];
  const transcript = document.getElementById("transcript");
  new MutationObserver(() => {
    const replies = transcript.querySelectorAll(".message.assistant");
    const text = replies[replies.length - 1]?.dataset.source;
    if (text !== undefined && text !== window.__snapshots.at(-1)) {
      window.__snapshots.push(text);
    }
  }).observe(transcript, { subtree: true, childList: true, attributeFilter: ["data-source"] });
}"""


def composer(page):
    """The message box once the page's script has wired it (the form's ``data-ready``): a
    test that types sooner races the script, as a person on a slow network would."""
    page.locator("#composer[data-ready]").wait_for(state="attached")
    return page.get_by_role("textbox", name="Message")


def send(page, text: str) -> None:
    composer(page).fill(text)
    composer(page).press("Enter")


def last_assistant(page):
    return page.locator(".message.assistant").last


def test_user_signs_in_and_watches_the_reply_grow_then_become_the_saved_markdown(
    server, browser, fake_upstream, transactional_db, tmp_path
):
    get_user_model().objects.create_user("hana", password="correct horse battery staple")
    tokens = ["Grüße", ', "friend"', " 👋🏽", "\n\nHere's **bold**", " and `code`", " — done."]
    fake_upstream.script("browser hello", tokens=tokens, interval=0.3)
    context = browser.new_context(base_url=server.url, viewport={"width": 1100, "height": 700})
    page = context.new_page()
    page.set_default_timeout(10_000)

    page.goto("/")
    expect(page).to_have_url(f"{server.url}/accounts/login/?next=/")
    page.get_by_label("Username").fill("hana")
    page.get_by_label("Password").fill("correct horse battery staple")
    page.get_by_role("button", name="Sign in").click()
    expect(composer(page)).to_be_visible()
    page.evaluate(RECORD_STREAMED_TEXT)
    send(page, "browser hello")

    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    expect(composer(page)).to_be_editable()
    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved).to_have_count(1)
    snapshots = page.evaluate("window.__snapshots")
    full_text = "".join(tokens)
    growing = [s for s in snapshots if s and s != full_text]
    assert len(growing) >= 3, snapshots
    assert all(full_text.startswith(s) for s in snapshots)
    assert snapshots[-1] == full_text
    expect(saved.locator("strong")).to_have_text("bold")
    expect(saved.locator("code")).to_have_text("code")
    expect(saved).to_contain_text('Grüße, "friend" 👋🏽')
    expect(page.get_by_role("status")).to_have_text("The reply is complete.")
    expect(composer(page)).to_be_enabled()
    conversation = Conversation.objects.get(owner__username="hana")
    expect(page).to_have_url(f"{server.url}/c/{conversation.pk}/")
    expect(page.get_by_role("navigation").get_by_role("link", name="browser hello")).to_be_visible()
    assert conversation.messages.get(role="assistant").content == full_text

    screenshots = ARTIFACTS if os.environ.get("UPDATE_SCREENSHOT") else tmp_path
    page.screenshot(path=screenshots / "chat-page.png")
    assert (screenshots / "chat-page.png").stat().st_size > 10_000
    context.close()


def test_stop_halts_the_reply_and_the_reloaded_page_shows_it_stopped(
    server, browser_page_for, user, fake_upstream
):
    fake_upstream.script("stop me", tokens=[f"word{i} " for i in range(400)], interval=0.03)
    page = browser_page_for(user)
    page.goto("/")

    send(page, "stop me")
    streaming_body = page.locator(".message.assistant.streaming .message-body")
    expect(streaming_body).to_contain_text("word5 ")
    page.get_by_role("button", name="Stop", exact=True).click()

    reply = last_assistant(page)
    expect(reply.locator(".message-note")).to_have_text("Stopped")
    expect(page.get_by_role("status")).to_have_text("The reply was stopped.")
    shown = reply.locator(".message-body").text_content()
    upstream = fake_upstream.requests_for("stop me")[-1]
    wait_for(lambda: upstream.aborted)
    saved = wait_for(lambda: Message.objects.filter(role="assistant", status="cancelled").first())
    # The reply has ended and been saved: had the page gone on reading, it would have grown.
    assert reply.locator(".message-body").text_content() == shown
    assert saved.content.startswith(shown)
    assert len(saved.content) < len("".join(f"word{i} " for i in range(400)))

    page.reload()
    stopped = page.locator('.message.assistant[data-status="cancelled"]')
    expect(stopped).to_have_count(1)
    expect(stopped.locator(".message-note")).to_have_text("Stopped")
    expect(stopped.locator(".message-body")).to_contain_text("word0 word1 word2 word3 word4 word5")


def test_markup_in_a_reply_stays_inert_while_streaming_and_after_the_swap(
    server, browser_page_for, user, fake_upstream
):
    tokens = [
        "<script>window.__pwned = 1</script>",
        ' <img src=x onerror="window.__pwned = 2">',
        " [click me](javascript:window.__pwned=3)",
        ' <a href="javascript:window.__pwned=4">raw link</a>',
        " [ok](https://example.org/)",
    ]
    fake_upstream.script("be evil", tokens=tokens, interval=0.2)
    page = browser_page_for(user)
    response = page.goto("/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.evaluate(RECORD_STREAMED_TEXT)

    send(page, "be evil")
    expect(page.locator(".message.assistant.streaming")).to_contain_text("<script>")
    expect(page.locator(".message.assistant.streaming")).to_contain_text("onerror")
    assert page.locator("#transcript img, #transcript script").count() == 0
    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved).to_have_count(1)

    assert page.evaluate("window.__pwned") is None
    assert "".join(tokens) in page.evaluate("window.__snapshots")
    assert page.locator("#transcript img, #transcript script, #transcript iframe").count() == 0
    assert page.locator("#transcript [onerror], #transcript [onclick]").count() == 0
    assert page.locator('#transcript a[href^="javascript"]').count() == 0
    expect(saved).to_contain_text("<script>window.__pwned = 1</script>")
    expect(saved.get_by_role("link", name="ok")).to_have_attribute("href", "https://example.org/")
    saved.get_by_text("click me").click()
    assert page.evaluate("window.__pwned") is None


def test_a_second_user_cannot_see_or_open_the_first_users_conversations(
    server, browser_page_for, make_user, fake_upstream
):
    alice, bob = make_user("alice"), make_user("bob")
    with session_client(server.url, alice) as client:
        response = client.post("/api/chat/stream", json={"message": "alice private topic"})
    conversation_id = response.headers["x-conversation-id"]
    alice_page = browser_page_for(alice)
    alice_page.goto("/")
    expect(alice_page.get_by_role("link", name="alice private topic")).to_be_visible()

    bob_page = browser_page_for(bob)
    bob_page.goto("/")
    expect(bob_page.get_by_role("navigation")).to_contain_text("No conversations yet.")
    expect(bob_page.get_by_text("alice private topic")).to_have_count(0)
    opened = bob_page.goto(f"/c/{conversation_id}/")
    assert opened.status == 404
    fragment = bob_page.goto(f"/c/{conversation_id}/messages/1/")
    assert fragment.status == 404


def test_an_upstream_error_is_shown_to_the_user(server, browser_page_for, user, fake_upstream):
    fake_upstream.script("break please", status=500)
    page = browser_page_for(user)
    page.goto("/")

    send(page, "break please")

    reply = page.locator('.message.assistant[data-status="error"]')
    expect(reply).to_have_count(1)
    expect(reply.locator(".message-note")).to_have_text(
        "Error: The model service failed to answer."
    )
    expect(page.get_by_role("status")).to_have_text("The reply failed.")
    expect(composer(page)).to_be_enabled()


def test_an_api_error_before_streaming_is_shown_to_the_user(
    server, browser_page_for, user, fake_upstream
):
    page = browser_page_for(user)
    page.goto("/")
    page.evaluate("document.getElementById('composer').dataset.conversationId = '987654'")

    send(page, "to a conversation that does not exist")

    note = page.locator("#composer").get_by_role("alert")
    expect(note).to_have_text("No such conversation.")
    expect(page.get_by_role("status")).to_have_text("The reply failed.")
    expect(page.locator(".message")).to_have_count(0)
    expect(composer(page)).to_have_value("to a conversation that does not exist")


def test_a_message_refused_for_too_many_streams_says_why_and_goes_back_in_the_composer(
    start_server, browser_page_for, user, fake_upstream
):
    one_stream_each = start_server(
        "one-stream",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_STREAMS_PER_USER="1",
        CHAT_STREAM_QUEUE_LENGTH="0",
        CACHE_KEY_PREFIX=f"one-stream-{uuid.uuid4().hex}",
    )
    fake_upstream.script("first tab", tokens=[f"t{i} " for i in range(400)], interval=0.03)
    first_tab = browser_page_for(user, one_stream_each)
    second_tab = browser_page_for(user, one_stream_each)
    first_tab.goto("/")
    second_tab.goto("/")
    send(first_tab, "first tab")
    expect(first_tab.locator(".message.assistant.streaming")).to_contain_text("t3 ")

    send(second_tab, "second tab")

    note = second_tab.locator("#composer").get_by_role("alert")
    expect(note).to_have_text(
        "Too many streams at once (the queue is full); at most 1 per user. Try again shortly."
    )
    expect(second_tab.get_by_role("status")).to_have_text("The reply failed.")
    expect(composer(second_tab)).to_have_value("second tab")
    expect(composer(second_tab)).to_be_enabled()
    assert fake_upstream.requests_for("second tab") == []
    first_tab.get_by_role("button", name="Stop", exact=True).click()
    expect(last_assistant(first_tab).locator(".message-note")).to_have_text("Stopped")


def test_a_connection_dropped_mid_reply_is_shown_and_the_text_so_far_kept(
    start_server, browser_page_for, user, fake_upstream
):
    doomed = start_server("doomed", CHAT_PROVIDER="openai", OPENAI_BASE_URL=fake_upstream.base_url)
    fake_upstream.script("drop me", tokens=[f"d{i} " for i in range(400)], interval=0.03)
    page = browser_page_for(user, doomed)
    page.goto("/")
    send(page, "drop me")
    streaming_body = page.locator(".message.assistant.streaming .message-body")
    expect(streaming_body).to_contain_text("d5 ")

    doomed.process.kill()

    reply = last_assistant(page)
    expect(reply).to_have_class(re.compile(r"\breconnecting\b"))
    expect(page.get_by_role("status")).to_have_text("Reconnecting…")
    # Five tries over 15.5 s, then the page gives up.
    expect(reply.get_by_role("alert")).to_have_text(
        "Error: the connection to the server was lost.", timeout=25_000
    )
    expect(reply.locator(".message-body")).to_contain_text("d0 d1 d2 d3 d4 d5 ")
    expect(page.get_by_role("status")).to_have_text("The reply failed.")
    expect(composer(page)).to_be_enabled()
    expect(composer(page)).to_have_value("")
    reply = Message.objects.get(role="assistant")
    assert reply.status == Message.Status.STREAMING
    interrupt_once_its_producer_is_gone(reply.pk)


SCROLL_POSITION = """() => {
  const scroller = document.scrollingElement;
  return {
    fromBottom: scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight,
    top: scroller.scrollTop,
    height: scroller.scrollHeight,
  };
}"""


def settled_position(page) -> dict:
    """The scroll position once a smooth scroll has come to rest."""
    previous = None
    for _ in range(50):
        current = page.evaluate(SCROLL_POSITION)["top"]
        if current == previous:
            return page.evaluate(SCROLL_POSITION)
        previous = current
        time.sleep(0.1)
    raise AssertionError("the page kept scrolling")


def test_the_page_follows_a_growing_reply_until_the_user_scrolls_up_even_a_little(
    server, browser_page_for, user, fake_upstream
):
    lines = [f"line {i}\n\n" for i in range(300)]
    fake_upstream.script("a long answer", tokens=lines, interval=0.03)
    page = browser_page_for(user, viewport={"width": 900, "height": 500})
    page.goto("/")

    def position() -> dict:
        return page.evaluate(SCROLL_POSITION)

    send(page, "a long answer")
    streaming_body = page.locator(".message.assistant.streaming .message-body")
    expect(streaming_body).to_contain_text("line 30")
    followed = position()
    assert followed["top"] > 0 and followed["fromBottom"] < 80

    page.mouse.move(450, 250)
    page.mouse.wheel(0, -40)
    scrolled_up = settled_position(page)
    assert scrolled_up["fromBottom"] >= 40
    expect(streaming_body).to_contain_text("line 60")
    left_alone = position()
    assert left_alone["top"] == scrolled_up["top"]
    assert left_alone["height"] > followed["height"]

    page.evaluate("window.scrollTo(0, document.scrollingElement.scrollHeight)")
    expect(streaming_body).to_contain_text("line 90")
    followed_again = position()
    assert followed_again["fromBottom"] < 80 and followed_again["height"] > left_alone["height"]
    page.get_by_role("button", name="Stop", exact=True).click()


def test_composer_keys_enter_sends_and_shift_enter_adds_a_line(
    server, browser_page_for, user, fake_upstream
):
    page = browser_page_for(user)
    page.goto("/")
    box = composer(page)

    box.fill("line one")
    box.press("Shift+Enter")
    box.type("line two")
    assert box.input_value() == "line one\nline two"
    box.press("Enter")

    expect(page.locator(".message.user .message-body")).to_have_text("line one\nline two")
    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(1)
    expect(box).to_be_focused()


SSE_PARSER_CHECK = """async () => {
  const script = document.querySelector('script[type="module"]').src;
  const { SSEParser } = await import(script);
  const events = [];
  const parser = new SSEParser((event) => events.push(event));
  const chunks = [
    'data: {"token": "a"', ', "done": false}\\r\\n\\r\\n',
    ': ping\\n\\ndata: {"token": "b", "done": false}\\n\\n',
    'data: {"token": "c", "done": false}\\n\\n',
    "id: 7\\nevent: error\\ndata: first line\\ndata: second line\\r", "\\n\\r\\n",
    'data: {"token": "\\u00e9\\u4f60", "done": true}\\n', "\\n",
  ];
  for (const chunk of chunks) parser.push(chunk);
  return events;
}"""


def test_the_page_parses_sse_split_across_chunks_and_line_endings(server, browser_page_for, user):
    page = browser_page_for(user)
    page.goto("/")

    events = page.evaluate(SSE_PARSER_CHECK)

    assert [e["type"] for e in events] == ["message", "message", "message", "error", "message"]
    assert [e["data"] for e in events[:3]] == [
        '{"token": "a", "done": false}',
        '{"token": "b", "done": false}',
        '{"token": "c", "done": false}',
    ]
    assert events[3]["data"] == "first line\nsecond line"
    assert events[3]["id"] == "7"
    assert events[4]["data"] == '{"token": "é你", "done": true}'


def test_a_reply_goes_on_through_a_reload_and_a_second_tab_watches_it(
    start_server, browser_page_for, user, fake_upstream
):
    patient = start_server(
        "patient",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_DETACH_GRACE_SECONDS="5",
    )
    tokens = [f"p{i} " for i in range(120)]
    fake_upstream.script("reload me", tokens=tokens, interval=0.03)
    page = browser_page_for(user, patient)
    other_tab = browser_page_for(user, patient)
    page.goto("/")
    send(page, "reload me")
    expect(page.locator(".message.assistant.streaming .message-body")).to_contain_text("p5 ")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))

    page.reload()
    other_tab.goto(page.url)

    for tab in (page, other_tab):
        growing = tab.locator(".message.assistant.streaming .message-body")
        expect(growing).to_contain_text("p20 ")
        expect(tab.get_by_role("button", name="Stop", exact=True)).to_be_visible()
    for tab in (page, other_tab):
        done = tab.locator('.message.assistant[data-status="complete"]')
        expect(done).to_have_count(1, timeout=10_000)
        expect(done.locator(".message-body")).to_have_text("".join(tokens).strip())
        expect(tab.get_by_role("status")).to_have_text("The reply is complete.")
    reply = Message.objects.get(role="assistant")
    assert (reply.status, reply.content) == ("complete", "".join(tokens))
    assert reply.attach_count == 2
    assert len(fake_upstream.requests_for("reload me")) == 1


COLLECT_EVENT_SOURCE = """(url) => {
  window.__tokens = [];
  window.__opens = 0;
  window.__finished = new Promise((resolve) => {
    const source = new EventSource(url);
    source.onopen = () => { window.__opens += 1; };
    source.onmessage = (event) => {
      if (event.data === "[DONE]") {
        source.close();
        resolve(window.__tokens);
        return;
      }
      window.__tokens.push(JSON.parse(event.data));
    };
  });
}"""


FINISHED_WITHIN_20_SECONDS = """() => Promise.race([
  window.__finished,
  new Promise((_, reject) => setTimeout(() => reject(new Error("no [DONE] in 20 s")), 20000)),
])"""


def test_an_event_source_whose_connection_is_cut_reconnects_and_misses_nothing(
    start_server, browser_page_for, user, fake_upstream
):
    patient = start_server(
        "behind-a-cut",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_DETACH_GRACE_SECONDS="5",
    )
    proxy = CuttableProxy(int(patient.url.rsplit(":", 1)[1])).start()
    try:
        tokens = [f"e{i} " for i in range(80)]
        fake_upstream.script("cut me", tokens=tokens, interval=0.03)
        page = browser_page_for(user, proxy)
        page.goto("/")
        page.evaluate(COLLECT_EVENT_SOURCE, "/api/chat/stream?message=cut+me")
        wait_for(lambda: page.evaluate("window.__tokens.length") >= 10)
        proxy.cut()

        text = "".join(page.evaluate(FINISHED_WITHIN_20_SECONDS))
        opens = page.evaluate("window.__opens")
    finally:
        proxy.stop()

    assert text == "".join(tokens)
    assert opens == 2
    assert proxy.connections >= 2
    assert len(fake_upstream.requests_for("cut me")) == 1
    reply = Message.objects.get(role="assistant")
    assert (reply.status, reply.content, reply.attach_count) == ("complete", text, 1)
