"""The one Jinja2 environment that renders every generated page, and why no template can forget to escape.

Templates live in site_gen/templates/; a file name says what it writes: `*.md.j2` Markdown,
`*.html.j2` raw HTML or SVG. Every `{{ value }}` is escaped for that language when it is printed
(the environment's `finalize`): `md_text` in Markdown, `html_attr` in HTML (quotes included, so
the value is inert in element content and in attributes alike). The one exception is a `Safe`
string: text that is escaped already, made by the filters below or by Python code that builds a
fragment from escaped parts (another template's output, a rendered docstring, a code block).

A template cannot declare a value safe: there is no `safe` filter (nor `escape`, `e`, `tojson`,
`urlize`, `xmlattr`, which would return markupsafe's `Markup`; `Markup` counts for nothing here),
autoescaping is off so macros and `~` give plain text, and plain text is escaped. Forgetting a
filter therefore escapes too much, which shows on the page, never too little.

Filters (each returns `Safe`, but count_label plain text and url None for an unsafe URL):
  html         HTML element content (quotes stay quotes: the byte form the pages always had)
  code         Markdown: an inline code span for an identifier or path, else escaped text
  ident        Markdown: an identifier or path as it is ([\\w./-] only), else escaped text
  link(url)    Markdown: [text](url) when url is a safe http(s) URL, else the escaped text
  link_title   Markdown: the "..." title of a link, quotes dropped
  url          a safe http(s) link target (percent-encoded; attribute-escaped in HTML), or None
  href         a link to a page, file or anchor of this site; anything else is an error
  join(sep)    Jinja's join, escaping each item that is not Safe (and the separator)
  count_label  3 -> "3 papers", 1 -> "1 paper"
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateRuntimeError, pass_context

from site_gen.site.escape import html_attr, html_text, md_code, md_link, md_text, safe_url

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# Jinja's filters that turn a value into markupsafe.Markup, i.e. would claim it is escaped.
_REMOVED_FILTERS = ("safe", "escape", "e", "forceescape", "tojson", "urlize", "xmlattr")
# A link inside the site: a relative path, a file name or an anchor; no scheme, no "//" host.
_HREF = re.compile(r"(?!//)[\w./~+-]*(#[\w.-]+)?")
_IDENT = re.compile(r"[\w./-]+")


class BuildError(Exception):
    """Input the generator cannot render; the message names the file and field."""


class Safe(str):
    """Text already escaped for the language of the template it is printed in; printed as it is.

    Only Python makes one (the filters here, `render`, `fragment`, and helpers that assemble
    escaped parts). Any operation on it (`+`, `.strip()`, an f-string) gives a plain `str`
    again, which the next template escapes: being safe does not spread by accident."""
    __slots__ = ()


def language(template_name: str | None) -> str:
    """"md" or "html", from the template's file name; any other name is an error."""
    name = template_name or ""
    if name.endswith(".md.j2"):
        return "md"
    if name.endswith(".html.j2"):
        return "html"
    raise TemplateRuntimeError(f"template {name!r}: name it *.md.j2 or *.html.j2 so its escaping is known")


ESCAPERS = {"md": md_text, "html": html_attr}


def _lang(context) -> str:
    return language(context.name)


def _only(context, lang: str, what: str) -> None:
    if _lang(context) != lang:
        raise TemplateRuntimeError(f"{context.name}: the `{what}` filter is for {lang} templates")


@pass_context
def finalize(context, value) -> str:
    """Every printed value: escaped for the template's language unless it is `Safe`."""
    if isinstance(value, Safe):
        return value
    return ESCAPERS[_lang(context)](value)


@pass_context
def _html(context, value) -> Safe:
    _only(context, "html", "html")
    return Safe(html_text(value))


@pass_context
def _code(context, value) -> Safe:
    _only(context, "md", "code")
    return Safe(md_code(value))


@pass_context
def _ident(context, value) -> Safe:
    _only(context, "md", "ident")
    text = str(value)
    return Safe(text if _IDENT.fullmatch(text) else md_text(text))


@pass_context
def _link(context, text, url) -> Safe:
    _only(context, "md", "link")
    return Safe(md_link(text, url))


@pass_context
def _link_title(context, value) -> Safe:
    _only(context, "md", "link_title")
    # inside "..." a quote would end the title; escaping it with a backslash is not portable
    return Safe(md_text(value).replace('"', ""))


@pass_context
def _url(context, value) -> Safe | None:
    target = safe_url(value)
    if target is None:
        return None
    return Safe(html_attr(target) if _lang(context) == "html" else target)


@pass_context
def _href(context, value) -> Safe:
    text = str(value)
    if not text or not _HREF.fullmatch(text):
        raise BuildError(f"{context.name}: {text!r} is not a link inside the site (no scheme, host or spaces)")
    return Safe(html_attr(text) if _lang(context) == "html" else text)


def _spaced(escape, text: str) -> str:
    """`text` escaped, keeping the spaces around it (the escapers trim them)."""
    core = text.strip()
    if not core:
        return text
    start = text.index(core)
    return text[:start] + escape(core) + text[start + len(core):]


@pass_context
def _join(context, items, separator: str = "") -> Safe:
    escape = ESCAPERS[_lang(context)]
    return Safe(_spaced(escape, separator).join(v if isinstance(v, Safe) else escape(v) for v in items))


def count_label(n: int) -> str:
    """3 -> "3 papers", 1 -> "1 paper"."""
    return f"{n} paper" if n == 1 else f"{n} papers"


@lru_cache(maxsize=None)
def environment() -> Environment:
    """The environment every page is rendered with (built once)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, autoescape=False,
                      finalize=finalize, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    for name in _REMOVED_FILTERS:
        env.filters.pop(name, None)
    env.filters.update(html=_html, code=_code, ident=_ident, link=_link, link_title=_link_title,
                       url=_url, href=_href, join=_join, count_label=count_label)
    return env


def render(template: str, /, **data) -> Safe:
    """The template rendered with `data`: its exact text, escaped for its language."""
    return Safe(environment().get_template(template).render(**data))


def fragment(template: str, /, **data) -> Safe:
    """`render` without the final newlines: a piece to print inside a line or before a blank line."""
    return Safe(render(template, **data).rstrip("\n"))


def stripped(text: Safe | str) -> Safe | str:
    """`text` without its final newlines; Safe stays Safe, plain text stays plain (and is escaped)."""
    return Safe(text.rstrip("\n")) if isinstance(text, Safe) else text.rstrip("\n")


def code_block(code: str, lang: str, indent: str = "") -> Safe:
    """A fenced code block holding `code` verbatim: the fence is longer than any run of backticks
    in it, so nothing inside can close it (no escape works inside a code block, none is needed)."""
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", code)), default=0))
    lines = [indent + fence + lang, *((indent + line).rstrip() for line in code.rstrip("\n").split("\n")),
             indent + fence]
    return Safe("\n".join(lines))
