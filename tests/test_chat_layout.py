"""The chat page's layout, themes and accessibility in a real browser (Chromium through the
running server): nothing widens the page, the sidebar becomes a drawer on a phone, dark mode
follows the system or the user's pick, the favicon is served, the tab title follows the
conversation, and axe-core finds no serious or critical violation."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from conversations.models import Conversation
from tests.helpers import answered, asked, transcript_create
from tests.test_chat_ui import ARTIFACTS, composer, send

AXE = Path(__file__).parent / "js" / "vendor" / "axe-core" / "axe.min.js"

LONG_CODE_LINE = "x = [" + ", ".join(f"{i:03}" for i in range(60)) + "]"
WIDE_TABLE = (
    "| " + " | ".join(f"column {i}" for i in range(24)) + " |\n"
    "|" + "---|" * 24 + "\n"
    "| " + " | ".join(f"value-{i}-{'w' * 12}" for i in range(24)) + " |\n"
)
WIDE_REPLY = (
    "Here is a wide reply with `inline code` and a [link](https://example.org/).\n\n"
    f"```python\n{LONG_CODE_LINE}\n```\n\n{WIDE_TABLE}\n"
    "A long word: " + "supercalifragilistic" * 8 + "\n"
)
LONG_TITLE = "A conversation title long enough to need an ellipsis " + "z" * 120

PAGE_WIDTH = """() => {
  const root = document.documentElement;
  const sidebar = document.getElementById("sidebar");
  return {
    scrollWidth: root.scrollWidth,
    clientWidth: root.clientWidth,
    sidebarScroll: sidebar ? sidebar.scrollWidth : 0,
    sidebarClient: sidebar ? sidebar.clientWidth : 0,
  };
}"""

COLOURS = """() => {
  const style = (selector) => getComputedStyle(document.querySelector(selector));
  return {
    body: style("html").backgroundColor,
    text: style("html").color,
    header: style(".site-header").backgroundColor,
    theme: document.documentElement.dataset.theme ?? null,
  };
}"""

RUN_AXE = """async () => {
  const results = await axe.run(document, { resultTypes: ["violations"] });
  return results.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(" ")}: ${n.failureSummary}`),
    }));
}"""


def conversation_with_wide_reply(user, title: str = "Wide things") -> Conversation:
    """A saved transcript with a user message and an assistant reply holding a 300-character
    code line, a wide table, inline code, a link and a long word, as the server renders them."""
    assert len(LONG_CODE_LINE) >= 300
    conversation = Conversation.objects.create(owner=user, title=title)
    transcript_create(
        conversation,
        asked("Show me something wide, please."),
        answered(WIDE_REPLY),
        asked("w" * 400),
        answered("It failed.", status="error", error_message="The model service failed to answer."),
    )
    return conversation


def assert_nothing_widens_the_page(page) -> None:
    widths = page.evaluate(PAGE_WIDTH)
    assert widths["scrollWidth"] == widths["clientWidth"], widths
    assert widths["sidebarScroll"] == widths["sidebarClient"], widths


def axe_violations(page) -> list[dict]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    return page.evaluate(RUN_AXE)


@pytest.mark.parametrize("width", [390, 1280])
def test_a_wide_reply_never_widens_the_page_and_scrolls_in_its_own_box(
    server, browser_page_for, user, width
):
    Conversation.objects.create(owner=user, title=LONG_TITLE)
    conversation = conversation_with_wide_reply(user)
    page = browser_page_for(user, viewport={"width": width, "height": 800})
    page.goto(f"/c/{conversation.pk}/")

    reply = page.locator(".message.assistant").first
    expect(reply.locator("pre")).to_contain_text(LONG_CODE_LINE)
    expect(reply.locator("table")).to_be_visible()
    assert_nothing_widens_the_page(page)
    for box in (reply.locator("pre"), reply.locator("table")):
        sizes = box.evaluate("(e) => [e.scrollWidth, e.clientWidth]")
        assert sizes[0] > sizes[1], sizes
        # Wider than its box: it scrolls, so it can be reached by keyboard too.
        expect(box).to_have_attribute("tabindex", "0")
        assert box.evaluate("(e) => getComputedStyle(e).overflowX") == "auto"
    if width == 390:
        page.get_by_role("button", name="Conversations").click()
    # A long title keeps its ellipsis (and the sidebar does not scroll sideways).
    long_link = page.get_by_role("link", name=LONG_TITLE)
    expect(long_link).to_be_visible()
    assert long_link.evaluate("(e) => e.scrollWidth > e.clientWidth")
    assert long_link.evaluate("(e) => getComputedStyle(e).textOverflow") == "ellipsis"
    assert_nothing_widens_the_page(page)


def test_a_streamed_wide_reply_keeps_the_page_width_on_a_phone(
    server, browser_page_for, user, fake_upstream
):
    fake_upstream.script("stream wide", tokens=[WIDE_REPLY[i : i + 40] for i in range(0, 2000, 40)])
    page = browser_page_for(user, viewport={"width": 390, "height": 800})
    page.goto("/")

    send(page, "stream wide")

    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved.locator("table")).to_be_visible()
    expect(saved.locator("pre")).to_have_attribute("tabindex", "0")
    assert_nothing_widens_the_page(page)


def test_the_sidebar_and_composer_stay_in_view_while_a_long_transcript_scrolls(
    server, browser_page_for, user
):
    conversation = Conversation.objects.create(owner=user, title="Long")
    for i in range(30):
        transcript_create(conversation, asked(f"question {i}"), answered("answer\n" * 5))
    page = browser_page_for(user, viewport={"width": 1280, "height": 700})
    page.goto(f"/c/{conversation.pk}/")
    new_chat = page.get_by_role("link", name="New chat")

    for position in ("0", "document.scrollingElement.scrollHeight / 2", "1e9"):
        page.evaluate(f"window.scrollTo(0, {position})")
        expect(new_chat).to_be_in_viewport()
        expect(composer(page)).to_be_in_viewport()
        expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
    assert page.evaluate("document.scrollingElement.scrollTop") > 1000


def test_on_a_phone_the_sidebar_is_a_drawer_behind_the_menu_button(server, browser_page_for, user):
    first = conversation_with_wide_reply(user, title="First chat")
    second = Conversation.objects.create(owner=user, title="Second chat")
    page = browser_page_for(user, viewport={"width": 390, "height": 800})
    page.goto(f"/c/{first.pk}/")
    menu = page.get_by_role("button", name="Conversations")
    nav = page.get_by_role("navigation", name="Conversations")

    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(menu).to_have_attribute("aria-controls", "sidebar")
    expect(nav).to_be_hidden()
    expect(composer(page)).to_be_visible()

    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(nav).to_be_visible()
    expect(nav.get_by_role("link", name="First chat")).to_be_focused()
    expect(nav.get_by_role("link", name="New chat")).to_be_in_viewport()
    # The page behind is out of reach while the drawer is open.
    assert page.evaluate("document.querySelector('.chat').inert")

    page.keyboard.press("Escape")
    expect(nav).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(menu).to_be_focused()
    assert not page.evaluate("document.querySelector('.chat').inert")

    page.keyboard.press("Enter")  # the focused menu button opens it again
    expect(nav).to_be_visible()
    page.locator(".drawer-backdrop").click(position={"x": 370, "y": 400})
    expect(nav).to_be_hidden()

    menu.click()
    nav.get_by_role("link", name="Second chat").click()
    expect(page).to_have_url(f"{server.url}/c/{second.pk}/")
    expect(nav).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")

    # Going back (the page may come from the back/forward cache) shows it closed too.
    menu.click()
    expect(nav).to_be_visible()
    nav.get_by_role("link", name="New chat").click()
    expect(page).to_have_url(f"{server.url}/")
    page.go_back()
    expect(page).to_have_url(f"{server.url}/c/{second.pk}/")
    expect(nav).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")


def test_on_a_wide_screen_the_sidebar_is_always_shown_and_the_menu_button_is_not(
    server, browser_page_for, user
):
    page = browser_page_for(user, viewport={"width": 1280, "height": 800})
    page.goto("/")

    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    expect(page.get_by_role("button", name="Conversations")).to_be_hidden()


def test_the_skip_link_goes_to_the_message_box(server, browser_page_for, user):
    page = browser_page_for(user)
    page.goto("/")

    # The page opens with the message box focused; from elsewhere, the skip link leads back.
    expect(composer(page)).to_be_focused()
    page.get_by_role("link", name="chatsite").focus()
    page.keyboard.press("Shift+Tab")
    skip = page.get_by_role("link", name="Skip to the message box")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(composer(page)).to_be_focused()


def test_dark_mode_follows_the_system_setting(server, browser_page_for, user):
    light = browser_page_for(user, color_scheme="light")
    dark = browser_page_for(user, color_scheme="dark")
    for page in (light, dark):
        page.goto("/")

    light_colours, dark_colours = light.evaluate(COLOURS), dark.evaluate(COLOURS)
    assert light_colours["theme"] is None and dark_colours["theme"] is None
    assert light_colours["body"] == "rgb(246, 247, 249)"
    assert dark_colours["body"] == "rgb(17, 19, 23)"
    assert dark_colours["text"] != light_colours["text"]
    assert dark_colours["header"] != light_colours["header"]


def test_the_theme_picker_overrides_the_system_and_is_remembered(server, browser_page_for, user):
    page = browser_page_for(user, color_scheme="light")
    page.goto("/")
    picker = page.get_by_label("Theme")
    expect(picker).to_have_value("system")
    system = page.evaluate(COLOURS)

    picker.select_option("dark")
    dark = page.evaluate(COLOURS)
    assert dark["theme"] == "dark"
    assert dark["body"] == "rgb(17, 19, 23)" != system["body"]

    page.reload()
    expect(page.get_by_label("Theme")).to_have_value("dark")
    assert page.evaluate(COLOURS) == dark
    # Applied before first paint, by the classic script in <head>: no module needed for it.
    assert page.evaluate(
        "document.head.querySelector('script:not([type=module]):not([defer])').src"
    ).endswith(".js")

    page.emulate_media(color_scheme="dark")
    page.get_by_label("Theme").select_option("light")
    light = page.evaluate(COLOURS)
    assert light["theme"] == "light" and light["body"] == "rgb(246, 247, 249)"
    page.goto("/accounts/login/")  # another page of the site
    page.goto("/")
    assert page.evaluate(COLOURS)["body"] == "rgb(246, 247, 249)"

    page.get_by_label("Theme").select_option("system")
    assert page.evaluate(COLOURS)["theme"] is None
    page.reload()
    assert page.evaluate(COLOURS)["body"] == "rgb(17, 19, 23)"
    assert page.evaluate("localStorage.getItem('chatsite-theme')") is None


def test_the_favicon_is_served_and_linked(server, browser_page_for, user):
    response = httpx.get(f"{server.url}/favicon.ico", follow_redirects=True)
    assert response.status_code == 200
    assert response.headers["content-type"] in {"image/x-icon", "image/vnd.microsoft.icon"}
    assert response.content[:4] == b"\x00\x00\x01\x00"

    page = browser_page_for(user)
    page.goto("/")
    for link in page.locator("link[rel=icon]").all():
        icon = httpx.get(server.url + link.get_attribute("href"))
        assert icon.status_code == 200, link.get_attribute("href")
        assert icon.headers["content-type"].startswith("image/")
    assert page.locator("link[rel=icon][type='image/svg+xml']").count() == 1


def test_the_tab_title_and_heading_follow_the_conversation(
    server, browser_page_for, user, fake_upstream
):
    existing = Conversation.objects.create(owner=user, title="Planning the trip")
    page = browser_page_for(user)
    page.goto(f"/c/{existing.pk}/")
    expect(page).to_have_title("Planning the trip · chatsite")
    expect(page.get_by_role("heading", level=1)).to_have_text("Planning the trip")

    page.goto("/")
    expect(page).to_have_title("New chat · chatsite")
    send(page, "tell me about tides")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    expect(page).to_have_title("tell me about tides · chatsite")
    expect(page.get_by_role("heading", level=1)).to_have_text("tell me about tides")
    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(1)
    page.reload()
    expect(page).to_have_title("tell me about tides · chatsite")

    # A later message in the conversation leaves its title and heading as they are.
    send(page, "and about waves")
    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(2)
    expect(page).to_have_title("tell me about tides · chatsite")
    expect(page.get_by_role("heading", level=1)).to_have_text("tell me about tides")


def test_each_page_has_one_h1_and_its_landmarks(server, browser_page_for, user):
    page = browser_page_for(user)
    page.goto("/")
    expect(page.locator("h1")).to_have_count(1)
    expect(page.get_by_role("banner")).to_have_count(1)
    expect(page.get_by_role("main")).to_have_count(1)
    expect(page.get_by_role("navigation", name="Conversations")).to_have_count(1)
    expect(page.get_by_role("form", name="Send a message")).to_have_count(1)
    for path in ("/accounts/login/", "/accounts/signup/"):
        anonymous = page.context.browser.new_context(base_url=server.url).new_page()
        anonymous.goto(path)
        expect(anonymous.locator("h1")).to_have_count(1)
        expect(anonymous.get_by_role("main")).to_have_count(1)
        anonymous.context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [390, 1280])
def test_axe_finds_no_serious_violation_on_the_chat_page(
    server, browser_page_for, user, scheme, width
):
    Conversation.objects.create(owner=user, title=LONG_TITLE)
    conversation = conversation_with_wide_reply(user)
    page = browser_page_for(
        user, color_scheme=scheme, viewport={"width": width, "height": 800}, bypass_csp=True
    )
    page.goto(f"/c/{conversation.pk}/")
    expect(page.locator(".message.assistant pre")).to_have_attribute("tabindex", "0")

    assert axe_violations(page) == []
    if width == 390:
        page.get_by_role("button", name="Conversations").click()
        expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
        assert axe_violations(page) == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("path", ["/accounts/login/", "/accounts/signup/"])
def test_axe_finds_no_serious_violation_on_the_sign_in_pages(server, browser, scheme, path):
    context = browser.new_context(base_url=server.url, color_scheme=scheme, bypass_csp=True)
    page = context.new_page()
    page.goto(path)
    # With errors shown, too.
    if path == "/accounts/login/":
        page.get_by_label("Username").fill("nobody")
        page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name=re.compile("Sign in|Create account")).click()
    expect(page.get_by_role("alert").first).to_be_visible()

    assert axe_violations(page) == []
    context.close()


def test_screenshots_of_the_chat_page_in_dark_and_on_a_phone(
    server, browser_page_for, user, tmp_path
):
    """``make screenshot`` (UPDATE_SCREENSHOT=1) refreshes the README's copies."""
    conversation = Conversation.objects.create(owner=user, title="Sorting in Python")
    transcript_create(
        conversation,
        asked("How do I sort a list of dicts by a key?"),
        answered(
            "Use `sorted` with a **key** function:\n\n"
            '```python\npeople = [{"name": "Ada", "age": 36}, {"name": "Alan", "age": 41}]\n'
            'by_age = sorted(people, key=lambda person: person["age"])\n```\n\n'
            "| name | age |\n|---|---|\n| Ada | 36 |\n| Alan | 41 |\n\n"
            "Pass `reverse=True` for the oldest first."
        ),
    )
    Conversation.objects.create(owner=user, title="Tides and the moon")
    screenshots = ARTIFACTS if os.environ.get("UPDATE_SCREENSHOT") else tmp_path
    shots = {
        "chat-page-dark.png": {"color_scheme": "dark", "viewport": {"width": 1100, "height": 700}},
        "chat-page-phone.png": {
            "color_scheme": "light",
            "viewport": {"width": 390, "height": 800},
            "device_scale_factor": 2,
        },
    }
    for name, options in shots.items():
        page = browser_page_for(user, **options)
        page.goto(f"/c/{conversation.pk}/")
        expect(page.locator(".message.assistant")).to_be_visible()
        page.screenshot(path=screenshots / name)
        assert (screenshots / name).stat().st_size > 10_000
