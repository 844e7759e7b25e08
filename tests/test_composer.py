"""The composer and reading aids in a real browser: Chromium, uvicorn, the SDK, the fake upstream.

The model picker and a new chat's system prompt reach the upstream; Esc stops a reply; a message
typed while a reply streams waits for its end; the counter, the over-long notice and drafts;
"Jump to latest", an old conversation opened at its end, and each reply's details on hover.
"""

from __future__ import annotations

import re
import uuid
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from conversations.models import Conversation, Message
from tests.helpers import answered, asked, transcript_create, wait_for
from tests.test_chat_ui import composer, last_assistant, send

FROM_BOTTOM = """() => {
  const scroller = document.scrollingElement;
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
}"""


@pytest.fixture(scope="module")
def site(start_server, fake_upstream):
    """The site offering two models: fake-model (the default) and fake-large."""
    return start_server(
        "composer",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_MODELS="fake-large",
        CHAT_AUTO_TITLES="0",
    )


@pytest.fixture
def page_for(browser_page_for, site, transactional_db):
    def make(user, **options):
        return browser_page_for(user, site, **options)

    return make


def streaming_requests(fake_upstream, trigger: str):
    return [r for r in fake_upstream.requests_for(trigger) if r.streaming]


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def test_the_picked_model_and_a_new_chats_system_prompt_reach_the_upstream_and_stay(
    page_for, user, fake_upstream
):
    trigger = unique("picker hello")
    page = page_for(user)
    page.goto("/")
    picker = page.get_by_role("combobox", name="Model")
    expect(picker).to_have_value("fake-model")

    picker.select_option("fake-large")
    page.locator("summary", has_text="System prompt").click()
    page.get_by_role("textbox", name="System prompt").fill("You are a terse pirate.")
    send(page, trigger)

    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved).to_have_count(1)
    request = streaming_requests(fake_upstream, trigger)[-1]
    assert request.body["model"] == "fake-large"
    assert request.body["messages"][0] == {"role": "system", "content": "You are a terse pirate."}
    conversation = Conversation.objects.get(owner=user)
    assert (conversation.model, conversation.system_prompt) == (
        "fake-large",
        "You are a terse pirate.",
    )
    expect(page.locator("#system-prompt-input")).not_to_be_editable()

    page.reload()
    expect(page.get_by_role("combobox", name="Model")).to_have_value("fake-large")
    expect(page.get_by_role("textbox", name="System prompt")).to_have_count(0)
    page.locator("summary", has_text="System prompt").click()
    expect(page.locator(".system-prompt-text")).to_have_text("You are a terse pirate.")


def test_send_waits_for_the_pages_script_so_a_message_is_never_submitted_as_a_plain_form(
    page_for, user, fake_upstream
):
    trigger = unique("early bird")
    fake_upstream.script(trigger, tokens=["worth ", "the wait"])
    page = page_for(user)
    navigations = []
    page.on("request", lambda r: navigations.append(r.url) if r.is_navigation_request() else None)
    held = []
    chat_js = re.compile(r"/conversations/chat(\.[0-9a-f]+)?\.js$")
    page.route(chat_js, lambda route: held.append(route))
    page.goto("/", wait_until="commit")

    box = page.get_by_role("textbox", name="Message")
    box.fill(trigger)
    send_button = page.get_by_role("button", name="Send", exact=True)
    expect(send_button).to_be_disabled()
    send_button.click(force=True)
    wait_for(lambda: held)
    held[0].continue_()

    expect(page.locator("#composer[data-ready]")).to_be_attached()
    expect(send_button).to_be_enabled()
    send_button.click()
    expect(page.locator('.message.assistant[data-status="complete"]')).to_contain_text("the wait")
    assert len(streaming_requests(fake_upstream, trigger)) == 1
    assert [url for url in navigations if "message=" in url] == []
    assert len(navigations) == 1, navigations


def test_a_replys_details_show_on_hover_and_on_keyboard_focus(page_for, user, fake_upstream):
    trigger = unique("details please")
    fake_upstream.script(trigger, tokens=["Some", " detail"], usage=(11, 7))
    page = page_for(user, timezone_id="Asia/Tokyo", locale="en-GB")
    page.goto("/")
    page.get_by_role("combobox", name="Model").select_option("fake-large")
    send(page, trigger)
    reply = page.locator('.message.assistant[data-status="complete"]')
    expect(reply).to_have_count(1)
    details = reply.locator("footer.message-meta")

    page.mouse.move(1, 1)
    expect(details).to_have_css("opacity", "0")
    reply.hover()
    expect(details).to_have_css("opacity", "1")
    expect(details).to_contain_text("fake-large")
    expect(details).to_contain_text("7 tokens")
    expect(details).to_contain_text("first token in")
    created_at = Message.objects.filter(role="assistant").get().created_at
    expect(details.locator("time")).to_have_attribute("datetime", created_at.isoformat())
    in_tokyo = created_at.astimezone(ZoneInfo("Asia/Tokyo"))
    expect(details.locator("time")).to_have_text(f"{in_tokyo.day} {in_tokyo:%b %Y, %H:%M}")

    page.reload()
    page.mouse.move(1, 1)
    details = page.locator(".message.assistant footer.message-meta")
    expect(details).to_have_css("opacity", "0")
    page.get_by_role("textbox", name="Message").focus()
    page.keyboard.press("Shift+Tab")
    for _ in range(10):
        if details.evaluate("node => node === document.activeElement"):
            break
        page.keyboard.press("Shift+Tab")
    expect(details).to_be_focused()
    expect(details).to_have_css("opacity", "1")
    expect(details).to_contain_text("7 tokens")


def test_escape_in_the_composer_stops_the_reply_and_it_is_saved_cancelled(
    page_for, user, fake_upstream
):
    trigger = unique("stop with escape")
    fake_upstream.script(trigger, tokens=[f"w{i} " for i in range(400)], interval=0.03)
    page = page_for(user)
    page.goto("/")

    send(page, trigger)
    expect(page.locator(".message.assistant.streaming .message-body")).to_contain_text("w3 ")
    expect(composer(page)).to_be_focused()
    composer(page).press("Escape")

    expect(last_assistant(page).locator(".message-note")).to_have_text("Stopped")
    saved = wait_for(lambda: Message.objects.filter(role="assistant", status="cancelled").first())
    assert saved.content.startswith("w0 w1 w2 w3 ")
    wait_for(lambda: streaming_requests(fake_upstream, trigger)[-1].aborted)


def test_a_message_typed_while_a_reply_streams_is_sent_after_it_ends(page_for, user, fake_upstream):
    first, second = unique("first question"), unique("second question")
    fake_upstream.script(first, tokens=[f"a{i} " for i in range(80)], interval=0.05)
    fake_upstream.script(second, tokens=["second ", "answer"])
    page = page_for(user)
    page.goto("/")

    send(page, first)
    expect(page.locator(".message.assistant.streaming .message-body")).to_contain_text("a2 ")
    composer(page).type(second)
    expect(composer(page)).to_have_value(second)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    composer(page).press("Enter")
    expect(page.get_by_text("Sends when this reply ends")).to_be_visible()
    first_request = streaming_requests(fake_upstream, first)[-1]
    assert first_request.finished_at is None, "the first reply ended too soon for this test"
    assert streaming_requests(fake_upstream, second) == []

    replies = page.locator('.message.assistant[data-status="complete"]')
    expect(replies).to_have_count(2, timeout=20_000)
    expect(replies.last).to_contain_text("second answer")
    expect(page.locator(".message.user .message-body").last).to_have_text(second)
    expect(composer(page)).to_have_value("")
    second_request = streaming_requests(fake_upstream, second)[-1]
    assert second_request.started_at >= first_request.finished_at
    conversation = Conversation.objects.get(owner=user)
    users = conversation.messages.filter(role="user").values_list("content", flat=True)
    assert list(users) == [first, second]


def test_the_counter_and_an_over_long_message_said_at_the_composer_with_the_draft_kept(
    page_for, user, fake_upstream
):
    page = page_for(user)
    page.goto("/")
    box = composer(page)
    counter = page.locator("#composer-counter")

    box.fill("a" * 100)
    expect(counter).to_be_hidden()
    box.fill("a" * 29_000)
    expect(counter).to_have_text("29,000 / 32,000 characters")

    too_long = "b" * 32_500
    box.fill(too_long)
    box.press("Enter")

    notice = page.locator("#composer").get_by_role("alert")
    expect(notice).to_have_text("Your message is too long: 32,500 characters, the limit is 32,000.")
    expect(page.locator(".message")).to_have_count(0)
    assert box.input_value() == too_long
    assert fake_upstream.requests_for(too_long) == []
    assert not Message.objects.exists()

    box.press("End")
    for _ in range(3):
        box.press("Backspace")
    expect(notice).to_be_visible()
    box.fill("b" * 31_000)
    expect(notice).to_be_hidden()


def test_the_composer_has_focus_and_grows_up_to_ten_lines_then_scrolls(page_for, user):
    page = page_for(user)
    page.goto("/")
    box = composer(page)
    expect(box).to_be_focused()

    def height() -> float:
        return box.evaluate("node => node.getBoundingClientRect().height")

    one_line = height()
    box.fill("\n".join(f"line {i}" for i in range(6)))
    six_lines = height()
    box.fill("\n".join(f"line {i}" for i in range(10)))
    ten_lines = height()
    box.fill("\n".join(f"line {i}" for i in range(12)))
    twelve_lines = height()
    box.fill("\n".join(f"line {i}" for i in range(30)))
    thirty_lines = height()

    assert one_line < six_lines < ten_lines
    assert thirty_lines == twelve_lines
    assert ten_lines <= thirty_lines < ten_lines + 2
    assert box.evaluate("node => node.scrollHeight > node.clientHeight")


def test_a_draft_is_kept_per_conversation_across_reloads_and_cleared_on_send(
    page_for, user, fake_upstream
):
    page = page_for(user)
    page.goto("/")
    composer(page).fill("a half-written thought")
    page.reload()
    expect(composer(page)).to_have_value("a half-written thought")

    send(page, unique("sent at last"))
    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(1)
    conversation = Conversation.objects.get(owner=user)
    expect(page).to_have_url(f"/c/{conversation.pk}/")
    composer(page).fill("a follow-up draft")

    page.goto("/")
    expect(composer(page)).to_have_value("")
    page.goto(f"/c/{conversation.pk}/")
    expect(composer(page)).to_have_value("a follow-up draft")


def test_jump_to_latest_appears_when_scrolled_up_and_takes_the_page_to_the_end(
    page_for, user, fake_upstream
):
    trigger = unique("a long answer")
    fake_upstream.script(trigger, tokens=[f"line {i}\n\n" for i in range(300)], interval=0.03)
    page = page_for(user, viewport={"width": 900, "height": 500})
    page.goto("/")
    jump = page.get_by_role("button", name="Jump to latest")

    send(page, trigger)
    streaming_body = page.locator(".message.assistant.streaming .message-body")
    expect(streaming_body).to_contain_text("line 30")
    expect(jump).to_be_hidden()

    page.mouse.move(450, 200)
    page.mouse.wheel(0, -300)
    expect(jump).to_be_visible()
    expect(streaming_body).to_contain_text("line 60")
    assert page.evaluate(FROM_BOTTOM) > 80

    jump.click()
    expect(jump).to_be_hidden()
    expect(streaming_body).to_contain_text("line 90")
    page.wait_for_function(f"() => ({FROM_BOTTOM})() < 80")
    page.get_by_role("button", name="Stop", exact=True).click()


def test_an_old_long_conversation_opens_at_its_latest_turn(page_for, user):
    conversation = Conversation.objects.create(owner=user, title="Long ago", model="fake-model")
    for i in range(30):
        transcript_create(
            conversation,
            asked(f"question {i}"),
            answered(f"answer {i}\n\n" + "filler line\n\n" * 3, model="fake-model"),
        )
    page = page_for(user, viewport={"width": 900, "height": 500})

    page.goto(f"/c/{conversation.pk}/")

    expect(page.locator(".message.assistant").last).to_be_in_viewport()
    expect(page.locator(".message.user").first).not_to_be_in_viewport()
    assert page.evaluate(FROM_BOTTOM) < 80
    jump = page.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_hidden()
    page.evaluate("window.scrollTo(0, 0)")
    expect(jump).to_be_visible()
    jump.click()
    expect(page.locator(".message.assistant").last).to_be_in_viewport()
