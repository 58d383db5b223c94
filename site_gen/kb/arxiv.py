"""Fetch a paper's metadata from the arXiv export API (Atom feed).

The reply is untrusted: size-capped, refused if it declares a DOCTYPE (the only door
to entity-expansion attacks on `xml.etree`, since defusedxml is not a dependency),
and every missing piece becomes an `ArxivError` with a one-line message.
The base URL can be pointed elsewhere (tests, mirrors) with ATLAS_ARXIV_API.
"""
from __future__ import annotations

import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote

import requests

DEFAULT_API = "http://export.arxiv.org/api/query"
ENV_API = "ATLAS_ARXIV_API"
MAX_REPLY_BYTES = 2 * 1024 * 1024
ATOM = "{http://www.w3.org/2005/Atom}"
ARXIV_REF_RE = re.compile(
    r"(?:https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/)?"
    r"(?P<id>\d{4}\.\d{4,5}|[a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/\d{7})(?P<v>v\d+)?(?:\.pdf)?/?\Z"
)


class ArxivError(Exception):
    """A one-line, user-facing reason why metadata could not be fetched."""


@dataclass(frozen=True)
class ArxivPaper:
    arxiv: str            # without version
    title: str
    authors: tuple[str, ...]
    published: str        # ISO date of the first version, e.g. "2022-10-31"

    @property
    def year(self) -> int:
        return int(self.published[:4])

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


def parse_ref(ref: str) -> str:
    """'2210.17323', '2210.17323v2' or an arxiv.org abs/pdf URL -> '2210.17323'."""
    m = ARXIV_REF_RE.match(ref.strip()) if isinstance(ref, str) else None
    if not m:
        raise ArxivError(f"--arxiv: {ref!r} is not an arXiv id (like 2210.17323) or arxiv.org link")
    return m["id"]


def api_base() -> str:
    return os.environ.get(ENV_API) or DEFAULT_API


def _collapse(text: str | None) -> str:
    # Atom titles are wrapped over lines with runs of spaces.
    return " ".join((text or "").split())


def parse_atom(reply: bytes, arxiv_id: str) -> ArxivPaper:
    """The single entry for `arxiv_id` in an export-API Atom reply."""
    if re.search(rb"<!(?:DOCTYPE|ENTITY)", reply, re.IGNORECASE):
        raise ArxivError("arXiv API reply declares a DOCTYPE/ENTITY; refused")
    try:
        root = ET.fromstring(reply)
    except ET.ParseError as exc:
        raise ArxivError(f"arXiv API reply is not valid Atom XML ({exc})") from None
    if root.tag != ATOM + "feed":
        raise ArxivError(f"arXiv API reply is not an Atom feed (root element {root.tag!r})")
    entries = root.findall(ATOM + "entry")
    if not entries:
        raise ArxivError(f"arXiv has no paper {arxiv_id}")
    entry = entries[0]
    entry_id = entry.findtext(ATOM + "id") or ""
    if "/api/errors" in entry_id or _collapse(entry.findtext(ATOM + "title")) == "Error":
        raise ArxivError(f"arXiv API error for {arxiv_id}: {_collapse(entry.findtext(ATOM + 'summary'))}")
    m = re.search(r"arxiv\.org/abs/(.+?)(?:v\d+)?$", entry_id)
    if not m or m.group(1) != arxiv_id:
        raise ArxivError(f"arXiv API answered with entry {entry_id!r}, not {arxiv_id}")
    title = _collapse(entry.findtext(ATOM + "title"))
    authors = tuple(a for a in (_collapse(n.findtext(ATOM + "name")) for n in entry.findall(ATOM + "author")) if a)
    published = _collapse(entry.findtext(ATOM + "published"))
    if not title:
        raise ArxivError(f"arXiv API reply for {arxiv_id} has no title")
    if not authors:
        raise ArxivError(f"arXiv API reply for {arxiv_id} has no authors")
    if not re.match(r"\d{4}-\d{2}-\d{2}", published):
        raise ArxivError(f"arXiv API reply for {arxiv_id} has no valid published date ({published!r})")
    return ArxivPaper(arxiv=arxiv_id, title=title, authors=authors, published=published[:10])


def _read_capped(resp: requests.Response) -> bytes:
    chunks, size = [], 0
    for chunk in resp.iter_content(65536):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise ArxivError(f"arXiv API reply is larger than {MAX_REPLY_BYTES} bytes; refused")
        chunks.append(chunk)
    return b"".join(chunks)


def fetch(arxiv_id: str, *, base_url: str | None = None, timeout: float = 10.0,
          retries: int = 3, backoff: float = 1.0) -> ArxivPaper:
    """Metadata of `arxiv_id`; retries connection errors and 5xx `retries` times (backoff doubling)."""
    base = base_url or api_base()
    url = f"{base}?id_list={quote(arxiv_id, safe='./')}"
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with requests.get(url, timeout=timeout, stream=True,
                              headers={"User-Agent": "low-bit-atlas (site_gen add)"}) as resp:
                if resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}"
                    continue
                if resp.status_code != 200:
                    raise ArxivError(f"arXiv API at {base} answered HTTP {resp.status_code}")
                body = _read_capped(resp)
        except (requests.ConnectionError, requests.Timeout) as exc:
            # requests wraps urllib3's MaxRetryError; its `reason` is the useful part.
            inner = exc.args[0] if exc.args else exc
            reason = getattr(inner, "reason", inner)
            last = f"{type(exc).__name__}: {_collapse(str(reason))[:300]}"
            continue
        except requests.RequestException as exc:
            raise ArxivError(f"cannot reach arXiv API at {base}: {_collapse(str(exc))[:200]}") from None
        return parse_atom(body, arxiv_id)
    raise ArxivError(f"cannot reach arXiv API at {base}: {last} (after {retries + 1} attempts)")
