"""Replies rendered as Markdown on the chat page: while they stream, after Stop, at the swap to
the saved copy and on reload; code highlighted, labelled and copyable; every message copyable;
markup from the model inert throughout. Chromium, uvicorn, the real SDK, the fake upstream."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import expect

from conversations.markdown import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, URL_SCHEMES, render_markdown
from conversations.models import Message
from tests.helpers import session_client, wait_for
from tests.test_chat_ui import last_assistant, send

ROOT = Path(__file__).resolve().parent.parent
RENDER_JS = ROOT / "static" / "conversations" / "render.js"

MARKDOWN_TOKENS = [
    "Here is **bold** and `inline code`.\n\n",
    "- first item\n",
    "- second item\n\n",
    "| name | value |\n",
    "| --- | --- |\n",
    "| pi | 3.14 |\n\n",
    "```python\n",
    "def double(x):\n",
    "    return x * 2\n",
    "```\n\n",
]
FILLER = [f"more{i} " for i in range(40)]

CLIPBOARD = {"permissions": ["clipboard-read", "clipboard-write"]}


def streaming_body(page):
    return page.locator(".message.assistant.streaming .message-body")


def count_renders_and_frames(page) -> None:
    """Count the streaming reply's renders (each writes its ``data-source``) and the frames."""
    page.evaluate(
        """() => {
          window.__renders = 0;
          window.__frames = 0;
          const tick = () => { window.__frames += 1; requestAnimationFrame(tick); };
          requestAnimationFrame(tick);
          new MutationObserver((records) => { window.__renders += records.length; })
            .observe(document.getElementById("transcript"),
                     { subtree: true, attributeFilter: ["data-source"] });
        }"""
    )


def test_markdown_is_rendered_while_the_reply_streams_once_per_frame_at_most(
    server, browser_page_for, user, fake_upstream
):
    tokens = MARKDOWN_TOKENS + FILLER
    fake_upstream.script("render live", tokens=tokens, interval=0.1)
    page = browser_page_for(user)
    page.goto("/")
    count_renders_and_frames(page)

    send(page, "render live")

    body = streaming_body(page)
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("p > code")).to_have_text("inline code")
    expect(body.locator("ul > li")).to_have_text(["first item", "second item"])
    expect(body.locator("table td")).to_have_text(["pi", "3.14"])
    expect(body.locator(".code-block .code-language")).to_have_text("python")
    expect(body.locator(".code-block code .hljs-keyword").first).to_have_text("def")
    expect(body).not_to_contain_text("**")
    upstream = fake_upstream.requests_for("render live")[-1]
    assert len(upstream.token_times) < len(tokens), "the reply had ended: not mid-stream"
    expect(page.locator(".message.assistant.streaming")).to_have_count(1)

    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved).to_have_count(1, timeout=15_000)
    renders, frames = page.evaluate("[window.__renders, window.__frames]")
    assert renders <= frames + 1


def test_a_burst_of_tokens_is_rendered_once_per_frame_not_per_token(
    server, browser_page_for, user, fake_upstream
):
    tokens = [f"w{i} " for i in range(600)]
    fake_upstream.script("burst", tokens=tokens)
    page = browser_page_for(user)
    page.goto("/")
    count_renders_and_frames(page)

    send(page, "burst")

    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved).to_have_count(1)
    expect(saved).to_have_attribute("data-source", "".join(tokens))
    renders, frames = page.evaluate("[window.__renders, window.__frames]")
    assert renders < len(tokens) / 4, renders
    assert renders <= frames + 1


XSS_TOKENS = [
    "<script>alert(1); window.__pwned = 1</script>\n\n",
    '<img src=x onerror="alert(2); window.__pwned = 2">\n\n',
    "[js link](javascript:alert(3))\n\n",
    "![data image](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUl"
    "EQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==)\n\n",
    "[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCg0KTwvc2NyaXB0Pg==)\n\n",
    '<svg onload="alert(5); window.__pwned = 5"><circle r="9"/></svg>\n\n',
    '<iframe src="javascript:alert(6)"></iframe>\n\n',
    '<a href="javascript:alert(7)">raw link</a>\n\n',
    "[ok](https://example.org/)\n\n",
    "```html\n<script>alert(8)</script>\n```\n\n",
]


def assert_inert(page, dialogs: list[str]) -> None:
    transcript = page.locator("#transcript")
    assert transcript.locator("script, img, svg, iframe, object, embed").count() == 0
    assert transcript.locator("[onerror], [onload], [onclick], [src]").count() == 0
    assert transcript.locator('[href^="javascript:" i], [href^="data:" i]').count() == 0
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []


def test_markup_from_the_model_stays_inert_while_streaming_and_after_the_swap(
    server, browser_page_for, user, fake_upstream
):
    fake_upstream.script("be evil", tokens=XSS_TOKENS + FILLER[:30], interval=0.1)
    page = browser_page_for(user)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto("/")

    send(page, "be evil")

    body = streaming_body(page)
    expect(body.locator(".code-language")).to_have_text("html")
    expect(body).to_contain_text("more3")
    assert_inert(page, dialogs)
    expect(body).to_contain_text("<script>alert(1); window.__pwned = 1</script>")
    expect(body.get_by_role("link", name="ok")).to_have_attribute("href", "https://example.org/")

    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved).to_have_count(1, timeout=15_000)
    assert_inert(page, dialogs)
    expect(saved.get_by_role("link", name="ok")).to_have_attribute(
        "rel", "noopener noreferrer nofollow"
    )
    page.reload()
    expect(page.locator(".message.assistant .code-language")).to_have_text("html")
    assert_inert(page, dialogs)


def test_after_stop_the_partial_reply_is_shown_rendered(
    server, browser_page_for, user, fake_upstream
):
    fake_upstream.script("stop rendered", tokens=MARKDOWN_TOKENS + FILLER, interval=0.1)
    page = browser_page_for(user)
    page.goto("/")

    send(page, "stop rendered")
    expect(streaming_body(page)).to_contain_text("more2")
    page.get_by_role("button", name="Stop", exact=True).click()

    reply = last_assistant(page)
    expect(reply.locator(".message-note")).to_have_text("Stopped")
    body = reply.locator(".message-body")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("table td")).to_have_text(["pi", "3.14"])
    expect(body.locator(".code-block .hljs-keyword").first).to_have_text("def")
    expect(body).not_to_contain_text("```")
    shown = reply.get_attribute("data-source")
    saved = wait_for(lambda: Message.objects.filter(role="assistant", status="cancelled").first())
    assert saved.content.startswith(shown)
    assert shown.rstrip().endswith(body.locator("p").last.text_content())


BOX_SAMPLER = """() => {
  window.__boxes = [];
  const tick = () => {
    const replies = document.querySelectorAll("#transcript .message.assistant");
    const reply = replies[replies.length - 1];
    if (reply) {
      const box = reply.getBoundingClientRect();
      window.__boxes.push({
        saved: reply.dataset.status === "complete",
        streaming: reply.classList.contains("streaming"),
        top: box.top + window.scrollY, left: box.left, width: box.width, height: box.height,
      });
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def test_the_swap_to_the_saved_copy_does_not_move_the_reply(
    server, browser_page_for, user, fake_upstream
):
    tokens = ["# A title\n\n", *MARKDOWN_TOKENS, "> quoted\n\n", "1. one\n2. two\n\n", "The end."]
    fake_upstream.script("no jump", tokens=tokens, interval=0.05)
    page = browser_page_for(user, viewport={"width": 1000, "height": 1400})
    page.goto("/")
    page.evaluate(BOX_SAMPLER)

    send(page, "no jump")

    saved = page.locator('.message.assistant[data-status="complete"]')
    expect(saved).to_have_count(1)
    expect(saved.locator(".code-block .hljs-keyword").first).to_have_text("def")
    frames = page.evaluate("window.__boxes.length")
    wait_for(lambda: page.evaluate("window.__boxes.length") > frames + 5)
    boxes = page.evaluate("window.__boxes")
    before = [b for b in boxes if not b["saved"]]
    after = [b for b in boxes if b["saved"]]
    assert before and after
    last_streamed, first_saved = before[-1], after[0]
    for key in ("top", "left", "width", "height"):
        assert abs(last_streamed[key] - first_saved[key]) < 0.5, (key, last_streamed, first_saved)
    for box in after:
        assert all(abs(box[key] - first_saved[key]) < 0.5 for key in ("top", "height")), box
    ended = [b for b in before if not b["streaming"]]
    assert all(abs(b["height"] - first_saved["height"]) < 0.5 for b in ended)


def test_copy_buttons_copy_the_exact_code_and_the_exact_reply(
    server, browser_page_for, user, fake_upstream
):
    code = 'def shout(text):\n    return f"{text.upper()}!"  # <b>not bold</b> & co\n'
    tokens = ["Some **markdown** first:\r\n\n", "```python\n", code, "```\n\n", "And after."]
    fake_upstream.script("copy me", tokens=tokens)
    page = browser_page_for(user, **CLIPBOARD)
    page.goto("/")
    send(page, "copy me")
    reply = page.locator('.message.assistant[data-status="complete"]')
    expect(reply).to_have_count(1)

    reply.get_by_role("button", name="Copy code").click()
    expect(reply.get_by_role("button", name="Copied code")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == code

    reply.get_by_role("button", name="Copy message").click()
    assert page.evaluate("navigator.clipboard.readText()") == "".join(tokens)
    question = page.locator(".message.user").last
    question.get_by_role("button", name="Copy message").click()
    assert page.evaluate("navigator.clipboard.readText()") == "copy me"

    page.reload()
    reply = last_assistant(page)
    saved = Message.objects.get(role="assistant")
    assert saved.content == "".join(tokens)
    reply.get_by_role("button", name="Copy message").click()
    wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == saved.content)
    reply.get_by_role("button", name="Copy code").click()
    wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == code)


def test_a_saved_reply_is_highlighted_with_a_language_label_on_page_load(
    server, browser_page_for, user, fake_upstream
):
    tokens = ["Run this:\n\n", "```javascript\n", "const answer = 42;\n", "```\n"]
    fake_upstream.script("saved code", tokens=tokens)
    with session_client(server.url, user) as client:
        response = client.post("/api/chat/stream", json={"message": "saved code"})
        conversation_id = response.headers["x-conversation-id"]
        html = client.get(f"/c/{conversation_id}/").text
    assert '<code class="language-javascript">const answer = 42;\n</code>' in html
    assert "hljs" not in html

    page = browser_page_for(user)
    page.goto(f"/c/{conversation_id}/")

    reply = last_assistant(page)
    expect(reply.locator(".code-block .code-language")).to_have_text("javascript")
    expect(reply.locator(".code-block code.hljs .hljs-keyword")).to_have_text("const")
    expect(reply.locator(".code-block code")).to_have_text("const answer = 42;\n")
    expect(reply.get_by_role("button", name="Copy code")).to_be_visible()
    expect(reply.get_by_role("button", name="Copy message")).to_be_visible()


PARITY_SAMPLES = [
    "".join(MARKDOWN_TOKENS),
    *XSS_TOKENS,
    "# One\n## Two\n###### Six\n\nSetext\n===",
    "line one\nline two  \nline three\\\nline four",
    "3. three\n4. four\n\n* a\n  * nested\n    1. deep",
    "~~gone~~ *em* _em_ __strong__ `a < b && c > d`",
    "| left | centre | right |\n| :--- | :---: | ---: |\n| 1 | 2 | 3 |",
    '[titled](https://example.org/a?b=1&c=2 "a title") <https://example.org/auto> <me@example.org>',
    "[relative](/c/1/) [mail](mailto:me@example.org) [ftp](ftp://example.org/) [vb](vbscript:x)",
    "> quote\n> > nested\n\n---\n\n    indented code\n\n```\nno language\n```",
    "&amp; &copy; &#35; &nbsp;| \\*not em\\* <b>bold?</b> <!-- comment -->",
    "```js\nunclosed fence while streaming",
    "Grüße 👋🏽 — “quotes” 'single' ... (c) -- --- +-",
]

PARITY_CHECK = """async (samples) => {
  const { markdownFragment } = await import("/static/conversations/render.js");
  const normalised = (root) => {
    for (const node of [...root.childNodes]) {
      if (node.nodeType === Node.TEXT_NODE && !node.data.trim()) node.remove();
    }
    return root.innerHTML;
  };
  return samples.map(([text, serverHtml]) => {
    const client = document.createElement("div");
    client.append(markdownFragment(text));
    const parsed = document.createElement("template");
    parsed.innerHTML = serverHtml;
    const server = document.createElement("div");
    server.append(parsed.content);
    return [normalised(client), normalised(server)];
  });
}"""


def test_the_page_renders_markdown_as_the_server_does(server, browser_page_for, user):
    page = browser_page_for(user)
    page.goto("/")

    pairs = page.evaluate(
        PARITY_CHECK, [[text, str(render_markdown(text))] for text in PARITY_SAMPLES]
    )

    for text, (client_html, server_html) in zip(PARITY_SAMPLES, pairs, strict=True):
        assert client_html == server_html, text


def js_literal(name: str):
    source = RENDER_JS.read_text()
    match = re.search(rf"export const {name} = (.*?);\n", source, re.DOTALL)
    assert match, f"render.js no longer declares {name}"
    return json.loads(match.group(1).replace(",\n]", "\n]"))


def test_the_page_sanitises_with_the_servers_allow_list():
    assert set(js_literal("ALLOWED_TAGS")) == ALLOWED_TAGS
    client_attributes = {tag: set(names) for tag, names in js_literal("ALLOWED_ATTRIBUTES").items()}
    assert client_attributes == ALLOWED_ATTRIBUTES
    assert set(js_literal("URL_SCHEMES")) == URL_SCHEMES


def test_the_vendored_libraries_are_the_pinned_versions():
    pins = json.loads((ROOT / "scripts" / "vendor" / "package.json").read_text())["dependencies"]
    vendor = ROOT / "static" / "vendor"
    headers = {
        "markdown-it": ("markdown-it/markdown-it.min.js", "/*! markdown-it {v} "),
        "dompurify": ("dompurify/purify.es.mjs", "/*! @license DOMPurify {v} "),
        "@highlightjs/cdn-assets": ("highlight.js/highlight.min.js", "Highlight.js v{v} "),
    }
    readme = (vendor / "README.md").read_text()
    for package, (path, header) in headers.items():
        version = pins[package]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{package} is not pinned exactly"
        assert header.format(v=version) in (vendor / path).read_text()[:300]
        assert f"| {version} | `{package}` |" in readme
        assert (vendor / path).parent.joinpath("LICENSE").is_file()


THEMED_COLOURS = """() => {
  const pre = document.querySelector(".message.assistant .code-block pre");
  const keyword = pre.querySelector(".hljs-keyword");
  return [getComputedStyle(pre).backgroundColor, getComputedStyle(keyword).color];
}"""


def test_code_blocks_follow_the_theme_the_system_or_the_users_choice(
    server, browser_page_for, user, fake_upstream
):
    fake_upstream.script("themed code", tokens=["```python\n", "import this\n", "```\n"])
    with session_client(server.url, user) as client:
        response = client.post("/api/chat/stream", json={"message": "themed code"})
    url = f"/c/{response.headers['x-conversation-id']}/"
    colours = {}
    for scheme in ("light", "dark"):
        page = browser_page_for(user, color_scheme=scheme)
        page.goto(url)
        expect(page.locator(".code-block .hljs-keyword")).to_have_text("import")
        colours[scheme] = page.evaluate(THEMED_COLOURS)
        chosen = "dark" if scheme == "light" else "light"
        page.evaluate(f"document.documentElement.dataset.theme = '{chosen}'")
        colours[f"{chosen} chosen on {scheme}"] = page.evaluate(THEMED_COLOURS)

    assert colours["light"] == ["rgb(246, 248, 250)", "rgb(207, 34, 46)"]
    assert colours["dark"] == ["rgb(13, 17, 23)", "rgb(255, 123, 114)"]
    assert colours["dark chosen on light"] == colours["dark"]
    assert colours["light chosen on dark"] == colours["light"]
