"""Escaping helpers: one per place a string from YAML or a record lands.

`md_text` (Markdown prose, table cells, link texts), `html_text` / `html_attr` (raw HTML and
SVG), `safe_url` (link targets), and two shapes built from them: `md_code` (an inline code span
for identifiers and paths) and `md_link`. Templates never call these by hand: the environment in
site_gen.site.templating applies them to every printed value (see its docstring).
"""
from __future__ import annotations

import html
import re
from urllib.parse import quote, urlsplit

# Characters with a meaning in Python-Markdown or GitHub Markdown inside a line. `<`, `>` and
# `&` become entities because Python-Markdown does not treat `\<` as an escape (the backslash
# would stay and `<script>` would pass through as raw HTML); `|` becomes an entity so that it
# can never split a table cell; `{` `}` are escaped because attr_list-style `{: onclick=...}`
# would otherwise add attributes wherever that extension is on.
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;"}
_MD_BACKSLASHED = set("\\`*_[]()#{}!")
# Characters left as they are in a URL; everything else (spaces, quotes, parentheses, angle
# brackets, backslashes, non-ASCII) is percent-encoded so a URL cannot end a Markdown link,
# open an attribute or start a tag.
_URL_SAFE = "-._~:/?#@!$&+,;=%"


def md_text(value: object) -> str:
    """Markdown-escape `value` for prose, a table cell or a link text; whitespace is collapsed
    to single spaces so that an embedded newline cannot start a new block or table row."""
    text = " ".join(str(value).split())
    out = []
    for ch in text:
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_BACKSLASHED:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def html_text(value: object) -> str:
    """Escape `value` for HTML or SVG element content (whitespace collapsed)."""
    return html.escape(" ".join(str(value).split()), quote=False)


def html_attr(value: object) -> str:
    """Escape `value` for a double- or single-quoted HTML attribute."""
    return html.escape(" ".join(str(value).split()), quote=True)


def safe_url(value: object) -> str | None:
    """`value` as a link target if it is an absolute http(s) URL with a host, else None.

    Anything else (javascript:, data:, relative paths, non-strings) is never emitted as a link.
    """
    if not isinstance(value, str):
        return None
    url = value.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return quote(url, safe=_URL_SAFE)


def md_code(value: object) -> str:
    """An inline code span for identifiers and paths; anything else falls back to `md_text`
    (inside a code span no escape works, so only plain names may go there)."""
    text = str(value)
    return f"`{text}`" if re.fullmatch(r"[\w./-]+", text) else md_text(text)


def md_link(text: object, url: object) -> str:
    """A Markdown link, or the escaped text alone when `url` is not a safe http(s) URL."""
    target = safe_url(url)
    label = md_text(text)
    return f"[{label}]({target})" if target else label
