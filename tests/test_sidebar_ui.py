"""The sidebar in a real browser: rename, delete, search, date groups and generated titles,
checked in what the page shows and in what the database holds."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from conversations.models import Conversation, Message
from tests.helpers import wait_for
from tests.test_chat_ui import send


def sidebar(page):
    return page.get_by_role("navigation", name="Conversations")


def conversation_with(owner, title: str, *texts: str, days_ago: int = 0) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, title=title)
    for text in texts:
        Message.objects.create(conversation=conversation, role="user", content=text)
    if days_ago:
        moment = timezone.now() - dt.timedelta(days=days_ago)
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=moment)
    return conversation


def test_a_conversation_is_renamed_in_place_enter_saves_and_escape_cancels(
    server, browser_page_for, user
):
    conversation = conversation_with(user, "Old name")
    page = browser_page_for(user)
    page.goto("/")
    nav = sidebar(page)

    nav.get_by_role("button", name="Rename Old name").click()
    field = nav.get_by_role("textbox", name="New title for Old name")
    expect(field).to_be_focused()
    field.fill("Never saved")
    field.press("Escape")
    expect(nav.get_by_role("link", name="Old name")).to_be_visible()
    expect(nav.get_by_role("button", name="Rename Old name")).to_be_focused()
    assert Conversation.objects.get(pk=conversation.pk).title == "Old name"

    nav.get_by_role("button", name="Rename Old name").click()
    field.fill("   ")
    field.press("Enter")
    expect(nav.get_by_role("alert")).to_have_text("A title cannot be empty.")
    expect(field).to_have_attribute("aria-invalid", "true")
    assert Conversation.objects.get(pk=conversation.pk).title == "Old name"

    field.fill("Trip to Kyoto")
    field.press("Enter")
    expect(nav.get_by_role("link", name="Trip to Kyoto")).to_be_visible()
    expect(nav.get_by_role("button", name="Rename Trip to Kyoto")).to_be_visible()
    expect(nav.get_by_role("textbox")).to_have_count(0)
    assert wait_for(lambda: Conversation.objects.get(pk=conversation.pk).title == "Trip to Kyoto")
    page.reload()
    expect(sidebar(page).get_by_role("link", name="Trip to Kyoto")).to_be_visible()


def test_renaming_the_open_conversation_changes_the_tab_title(server, browser_page_for, user):
    conversation = conversation_with(user, "Draft", "hello")
    page = browser_page_for(user)
    page.goto(f"/c/{conversation.pk}/")
    expect(page).to_have_title("Draft · chatsite")

    sidebar(page).get_by_role("button", name="Rename Draft").click()
    field = sidebar(page).get_by_role("textbox", name="New title for Draft")
    field.fill("Final")
    field.press("Enter")

    expect(page).to_have_title("Final · chatsite")
    assert wait_for(lambda: Conversation.objects.get(pk=conversation.pk).title == "Final")


def test_delete_asks_first_then_removes_the_conversation(server, browser_page_for, user):
    keep = conversation_with(user, "Keep me", "a")
    doomed = conversation_with(user, "Remove me", "b")
    page = browser_page_for(user)
    page.on("dialog", lambda dialog: pytest.fail(f"a browser dialog was opened: {dialog.message}"))
    page.goto(f"/c/{keep.pk}/")
    nav = sidebar(page)

    nav.get_by_role("button", name="Delete Remove me").click()
    confirm = nav.get_by_role("group", name="Delete Remove me?")
    expect(confirm).to_contain_text("Delete this conversation?")
    expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_have_count(0)
    assert Conversation.objects.filter(pk=doomed.pk).exists()

    nav.get_by_role("button", name="Delete Remove me").click()
    confirm.get_by_role("button", name="Delete", exact=True).click()

    expect(nav.get_by_role("link", name="Remove me")).to_have_count(0)
    expect(nav.get_by_role("link", name="Keep me")).to_be_visible()
    expect(page).to_have_url(f"{server.url}/c/{keep.pk}/")
    assert wait_for(lambda: not Conversation.objects.filter(pk=doomed.pk).exists())
    assert not Message.objects.filter(conversation_id=doomed.pk).exists()
    assert Conversation.objects.filter(pk=keep.pk).exists()


def test_deleting_the_open_conversation_goes_to_a_new_chat(server, browser_page_for, user):
    only = conversation_with(user, "Open one", "hi")
    page = browser_page_for(user)
    page.goto(f"/c/{only.pk}/")

    sidebar(page).get_by_role("button", name="Delete Open one").click()
    sidebar(page).get_by_role("button", name="Delete", exact=True).click()

    expect(page).to_have_url(f"{server.url}/")
    expect(page).to_have_title("New chat · chatsite")
    expect(sidebar(page)).to_contain_text("No conversations yet.")
    assert not Conversation.objects.filter(pk=only.pk).exists()


def test_search_replaces_the_list_while_typed_and_escape_restores_it(
    server, browser_page_for, user, make_user
):
    conversation_with(user, "Kyoto itinerary", "where to stay")
    conversation_with(user, "Travel", "Which temples in Kyoto open early?")
    conversation_with(user, "Recipes", "how long to boil an egg")
    conversation_with(make_user("mallory"), "Kyoto for mallory", "Kyoto")
    page = browser_page_for(user)
    page.goto("/")
    nav = sidebar(page)
    box = nav.get_by_role("search").get_by_role("searchbox", name="Search conversations")

    box.fill("kyo")

    results = page.locator("#conversation-search-list")
    expect(results.get_by_role("link")).to_have_count(2)
    expect(results.get_by_role("link", name="Kyoto itinerary")).to_be_visible()
    expect(results.get_by_role("link", name="Travel")).to_be_visible()
    expect(results).to_contain_text("Which temples in Kyoto open early?")
    expect(nav.get_by_role("link", name="Recipes")).to_be_hidden()
    expect(nav).to_contain_text("2 conversations found.")

    box.fill("zebra")
    expect(nav).to_contain_text("No conversations match “zebra”.")
    expect(results.get_by_role("link")).to_have_count(0)

    box.press("Escape")
    expect(box).to_have_value("")
    expect(nav.get_by_role("link", name="Recipes")).to_be_visible()
    expect(nav.get_by_role("link", name="Kyoto itinerary")).to_be_visible()
    expect(results).to_be_hidden()


def test_a_conversation_renamed_from_search_results_is_renamed_in_the_list_too(
    server, browser_page_for, user
):
    conversation = conversation_with(user, "Piano", "scales practice")
    page = browser_page_for(user)
    page.goto("/")
    nav = sidebar(page)
    nav.get_by_role("searchbox", name="Search conversations").fill("scales")
    results = page.locator("#conversation-search-list")
    results.get_by_role("button", name="Rename Piano").click()
    field = results.get_by_role("textbox", name="New title for Piano")
    field.fill("Piano lessons")
    field.press("Enter")
    expect(results.get_by_role("link", name="Piano lessons")).to_be_visible()

    nav.get_by_role("searchbox", name="Search conversations").press("Escape")

    expect(nav.get_by_role("link", name="Piano lessons")).to_be_visible()
    assert wait_for(lambda: Conversation.objects.get(pk=conversation.pk).title == "Piano lessons")


def test_conversations_are_grouped_by_day_and_a_new_one_goes_under_today(
    server, browser_page_for, user, fake_upstream
):
    conversation_with(user, "From last year", days_ago=400)
    conversation_with(user, "From three days ago", days_ago=3)
    conversation_with(user, "From yesterday", days_ago=1)
    page = browser_page_for(user)
    page.goto("/")
    nav = sidebar(page)

    expect(nav.get_by_role("heading")).to_have_text(["Yesterday", "Previous 7 days", "Older"])
    for heading, title in [
        ("Yesterday", "From yesterday"),
        ("Previous 7 days", "From three days ago"),
        ("Older", "From last year"),
    ]:
        group = nav.get_by_role("region", name=heading)
        expect(group.get_by_role("link")).to_have_text([title])

    send(page, "A brand new question")

    today = nav.get_by_role("region", name="Today")
    expect(today.get_by_role("link")).to_have_text(["A brand new question"])
    expect(nav.get_by_role("heading")).to_have_text(
        ["Today", "Yesterday", "Previous 7 days", "Older"]
    )
    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(1)
    page.reload()
    expect(sidebar(page).get_by_role("region", name="Today").get_by_role("link")).to_have_text(
        ["A brand new question"]
    )


def test_a_reply_in_an_older_conversation_moves_it_under_today(
    server, browser_page_for, user, fake_upstream
):
    old = conversation_with(user, "Old thread", "earlier", days_ago=10)
    page = browser_page_for(user)
    page.goto(f"/c/{old.pk}/")
    nav = sidebar(page)
    expect(nav.get_by_role("region", name="Older").get_by_role("link")).to_have_text(["Old thread"])

    send(page, "one more thing")

    expect(nav.get_by_role("region", name="Today").get_by_role("link")).to_have_text(["Old thread"])
    expect(nav.get_by_role("region", name="Older")).to_have_count(0)


@pytest.fixture(scope="module")
def titling_server(start_server, fake_upstream):
    return start_server(
        "titles-ui",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_AUTO_TITLES="1",
    )


def test_the_generated_title_appears_in_the_sidebar_and_the_tab(
    titling_server, browser_page_for, transactional_db, user, fake_upstream
):
    trigger = "Could you help me organise a birthday party for my daughter who turns seven"
    fake_upstream.script(
        trigger, tokens=["Of course!", " Here", " are ideas."], completion="Birthday Party Ideas"
    )
    page = browser_page_for(user, site=titling_server)
    page.goto("/")

    send(page, trigger)

    nav = sidebar(page)
    expect(nav.get_by_role("link", name="Birthday Party Ideas")).to_be_visible()
    expect(page).to_have_title("Birthday Party Ideas · chatsite")
    conversation = Conversation.objects.get(owner=user)
    assert conversation.title == "Birthday Party Ideas"
    expect(page).to_have_url(f"{titling_server.url}/c/{conversation.pk}/")


def test_a_failed_title_leaves_the_first_words_in_the_sidebar(
    titling_server, browser_page_for, transactional_db, user, fake_upstream
):
    trigger = "Summarise the plot of a long Russian novel about a family, its feuds and a railway"
    fake_upstream.script(trigger, tokens=["It is long."], completion_status=500)
    page = browser_page_for(user, site=titling_server)
    page.goto("/")

    send(page, trigger)

    provisional = "Summarise the plot of a long Russian novel about a family…"
    expect(page.locator('.message.assistant[data-status="complete"]')).to_have_count(1)
    expect(sidebar(page).get_by_role("link", name=provisional)).to_be_visible()
    expect(page).to_have_title(f"{provisional} · chatsite")
    wait_for(lambda: [r for r in fake_upstream.requests_for(trigger) if not r.streaming])
    assert Conversation.objects.get(owner=user).title == provisional


def test_leaving_the_rename_field_keeps_a_changed_title(server, browser_page_for, user):
    conversation = conversation_with(user, "Before")
    page = browser_page_for(user)
    page.goto("/")
    nav = sidebar(page)

    nav.get_by_role("button", name="Rename Before").click()
    nav.get_by_role("textbox", name="New title for Before").fill("After")
    page.get_by_role("textbox", name="Message").click()

    expect(nav.get_by_role("link", name="After")).to_be_visible()
    assert wait_for(lambda: Conversation.objects.get(pk=conversation.pk).title == "After")
