"""The built site as a person uses it, in headless Chromium: navigation, search, the paper
filter, plots, hostile data, console errors, and screenshots kept as artifacts.

Fixtures (tests/browser/conftest.py) build the site into a temporary folder, serve it on
127.0.0.1 and share one browser; the `browser` fixture fails a test that leaves a SEVERE
console message.
"""
from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from site_gen import ROOT

SUB_PAGE = "generated/taxonomy/3.2-metric-and-mechanism/3.2.3-other-enlightening-mechanisms/"
TECHNIQUE = "gptq"  # the reference implementation filed under 3.2.3
COUNT = re.compile(r"(\d+) of (\d+) papers")

VISIBLE_ROWS_JS = """
return Array.from(document.querySelectorAll('#papers-table tbody tr'))
  .filter(tr => tr.offsetParent !== null)
  .map(tr => [tr.dataset.id, tr.textContent + ' ' + (tr.dataset.authors || '')]);
"""


def wait(drv, timeout: float = 10) -> WebDriverWait:
    return WebDriverWait(drv, timeout)


def search(drv, text: str) -> list:
    """Type into Material's search box (in the header at this width; behind an icon on narrow
    screens) and return the texts of the results once there are some."""
    box = drv.find_element(By.CSS_SELECTOR, "input.md-search__input")
    if not box.is_displayed():
        drv.find_element(By.CSS_SELECTOR, 'label.md-header__button[for="__search"]').click()
    box = wait(drv).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")))
    box.click()
    box.send_keys(text)
    # Texts read in the page: Material re-renders the list while results stream in.
    return wait(drv, 20).until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.md-search-result__item'))"
        ".map(li => li.textContent)") or False)


def screenshot(drv, path: Path, max_height: int = 2400) -> Path:
    """The page from its top, as tall as its content (at most `max_height` px), as PNG."""
    height = min(max_height, drv.execute_script("return document.documentElement.scrollHeight"))
    width = drv.execute_script("return document.documentElement.clientWidth")
    shot = drv.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


def count_text(drv) -> tuple[int, int]:
    match = COUNT.fullmatch(drv.find_element(By.ID, "papers-count").text.strip())
    assert match, drv.find_element(By.ID, "papers-count").text
    return int(match.group(1)), int(match.group(2))


def open_papers(drv, base: str, query: str = "") -> None:
    drv.get(urljoin(base, "generated/papers/") + query)
    wait(drv).until(EC.presence_of_element_located((By.ID, "papers-q")))


# ---------------------------------------------------------------- navigation

def test_home_to_subcategory_to_technique(browser, site_url, artifact):
    browser.get(site_url)
    assert browser.title.startswith("Low-Bit Atlas")
    screenshot(browser, artifact("home.png"))
    # The taxonomy diagram's box for 3.2.3 (an SVG link), clicked like a person would.
    box = browser.find_element(By.CSS_SELECTOR, f'.atlas-tree a[href$="{SUB_PAGE}"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    box.click()
    wait(browser).until(EC.url_contains(SUB_PAGE))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("3.2.3")

    # The reference implementations list names gptq's module and paper.
    heading = browser.find_element(By.ID, "reference-implementations")
    items = heading.find_elements(By.XPATH, "following-sibling::ul[1]/li")
    item = next((li for li in items if TECHNIQUE in li.text), None)
    assert item is not None, [li.text for li in items]
    assert "refimpl/mechanism/gptq.py" in item.text
    assert any("arxiv.org/abs/2210.17323" in a.get_attribute("href")
               for a in item.find_elements(By.TAG_NAME, "a"))
    # The technique's own page: a link into this site whose URL ends in /gptq/.
    hrefs = browser.execute_script(
        "return Array.from(document.querySelectorAll('article a')).map(a => a.href)")
    target = next((h for h in hrefs if urlsplit(h).netloc == urlsplit(site_url).netloc
                   and urlsplit(h).path.rstrip("/").endswith("/" + TECHNIQUE)), None)
    if target is None:
        screenshot(browser, artifact("subcategory.png"), max_height=1600)
        print("no technique page linked from the sub-category page yet; stopped at the sub-category")
        return
    link = browser.execute_script(
        "return Array.from(document.querySelectorAll('article a')).find(a => a.href === arguments[0])",
        target)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    wait(browser).until(EC.url_to_be(target))
    assert TECHNIQUE in browser.find_element(By.TAG_NAME, "article").text.lower()
    assert browser.find_element(By.TAG_NAME, "h1").text
    screenshot(browser, artifact("technique.png"), max_height=2400)


def test_search_finds_gptq(browser, site_url):
    browser.get(site_url)
    results = search(browser, "GPTQ")
    assert any("gptq" in r.lower() for r in results), [r[:80] for r in results[:5]]
    meta = browser.find_element(By.CSS_SELECTOR, ".md-search-result__meta").text
    assert re.search(r"\d+ matching document", meta), meta


# ---------------------------------------------------------------- the paper filter

def test_paper_filter_narrows_and_counts(browser, site_url, artifact):
    open_papers(browser, site_url)
    total_files = len(list((ROOT / "papers").glob("*/*.yaml")))
    shown, total = count_text(browser)
    assert shown == total == total_files == len(browser.execute_script(VISIBLE_ROWS_JS))

    query = browser.find_element(By.ID, "papers-q")
    query.send_keys("GPTQ")
    rows = browser.execute_script(VISIBLE_ROWS_JS)
    shown, total = count_text(browser)
    assert 1 <= shown == len(rows) < total == total_files
    assert all("gptq" in (pid + " " + text).lower() for pid, text in rows)
    assert "gptq" in [pid for pid, _ in rows]
    assert "q=GPTQ" in browser.current_url  # the filter is kept in the address
    screenshot(browser, artifact("papers-filtered.png"), max_height=1400)

    Select(browser.find_element(By.ID, "papers-year")).select_by_value("2023")
    browser.find_element(By.ID, "papers-has-code").click()
    narrower = browser.execute_script(VISIBLE_ROWS_JS)
    assert count_text(browser) == (len(narrower), total) and 1 <= len(narrower) <= len(rows)
    assert all(browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{pid}"]').get_attribute("data-year")
               == "2023" for pid, _ in narrower)

    # Sub-category and sort: 3.2.3 by title, A to Z.
    browser.find_element(By.ID, "papers-reset").click()
    assert count_text(browser) == (total, total)
    Select(browser.find_element(By.ID, "papers-sub")).select_by_value("3.2.3")
    Select(browser.find_element(By.ID, "papers-sort")).select_by_value("title")
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#papers-table tbody tr'))"
        ".filter(tr => tr.offsetParent !== null).map(tr => tr.cells[1].textContent.trim())")
    assert count_text(browser)[0] == len(titles) >= 2
    assert titles == sorted(titles, key=str.casefold)

    # A shared address restores the same view; has-refimpl keeps papers with a technique.
    open_papers(browser, site_url, "?refimpl=1")
    with_code = browser.execute_script(VISIBLE_ROWS_JS)
    assert count_text(browser) == (len(with_code), total) and "gptq" in [p for p, _ in with_code]
    assert browser.find_element(By.ID, "papers-has-refimpl").is_selected()


def test_paper_exports_are_linked_and_served(browser, site_url):
    open_papers(browser, site_url)
    links = dict(browser.execute_script(
        "return Array.from(document.querySelectorAll('article a'))"
        ".filter(a => a.textContent.startsWith('papers.')).map(a => [a.textContent, a.href])"))
    assert set(links) == {"papers.json", "papers.csv", "papers.bib"}
    for name, href in links.items():
        size = browser.execute_script(
            "const r = new XMLHttpRequest(); r.open('GET', arguments[0], false); r.send();"
            "return [r.status, r.responseText.length];", href)
        assert size[0] == 200 and size[1] > 1000, (name, size)


# ---------------------------------------------------------------- plots

def _pages_with_svg_images(site: Path) -> list[str]:
    found = []
    for page in sorted(site.rglob("index.html")):
        if re.search(r"<img[^>]+src=\"[^\"]+\.svg\"", page.read_text(encoding="utf-8")):
            found.append(page.parent.relative_to(site).as_posix() + "/")
    return found


def test_plots_load(browser, site_dir, site_url):
    pages = _pages_with_svg_images(site_dir)
    if not pages:
        pytest.skip("no page of the built site shows an SVG plot yet (<img src=...svg>)")
    for rel in pages[:3]:
        browser.get(urljoin(site_url, "" if rel == "./" else rel))
        sizes = browser.execute_script(
            "const imgs = Array.from(document.querySelectorAll('img')).filter(i => /\\.svg$/.test(i.src));"
            "return Promise.all(imgs.map(i => i.decode().catch(() => null)))"
            ".then(() => imgs.map(i => [i.src, i.naturalWidth, i.naturalHeight]));")
        assert sizes, rel
        for src, w, h in sizes:
            assert w > 0 and h > 0, (rel, src, w, h)


# ---------------------------------------------------------------- hostile data

def _assert_nothing_ran(drv, expected_title: str) -> None:
    assert drv.execute_script("return window.__xss === undefined")
    assert drv.title == expected_title
    assert not drv.find_elements(By.CSS_SELECTOR, 'img[src="x"], img[src="y"], b[onmouseover], svg[onload]')


def test_hostile_paper_shows_as_text_and_runs_nothing(browser, hostile_site_url, hostile_paper):
    evil = hostile_paper
    open_papers(browser, hostile_site_url)
    _assert_nothing_ran(browser, "All papers - Low-Bit Atlas")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{evil["id"]}"]')
    visible = " ".join(row.text.split())
    assert " ".join(evil["title"].split()) in visible
    assert evil["venue"] in visible and evil["tags"][0] in visible
    assert not row.find_elements(By.CSS_SELECTOR, 'a[href^="javascript"]')

    # The filter's controls are built from the same data: labels, not markup.
    venues = [o.text for o in Select(browser.find_element(By.ID, "papers-venue")).options]
    assert any(o.startswith(evil["venue"]) for o in venues)
    browser.find_element(By.ID, "papers-q").send_keys("Mallory")  # matches the author only
    assert count_text(browser) == (1, 3)  # gptq, awq and the hostile paper
    _assert_nothing_ran(browser, "All papers - Low-Bit Atlas")

    # The sub-category page (Markdown table) and the site search show it as text as well.
    browser.get(urljoin(hostile_site_url, SUB_PAGE))
    title = browser.title
    assert "pwned" not in title
    assert " ".join(evil["title"].split()) in " ".join(browser.find_element(By.TAG_NAME, "article").text.split())
    _assert_nothing_ran(browser, title)
    assert any("evil" in r.lower() for r in search(browser, "Evil"))
    _assert_nothing_ran(browser, title)


# ---------------------------------------------------------------- console and look

@pytest.mark.parametrize("rel", ["", "generated/papers/", SUB_PAGE, "about/"],
                         ids=["home", "papers", "subcategory", "about"])
def test_pages_load_without_console_errors(browser, site_url, rel):
    browser.get(urljoin(site_url, rel))
    wait(browser).until(lambda d: d.execute_script("return document.readyState") == "complete")
    assert browser.find_element(By.TAG_NAME, "h1").text
    # the `browser` fixture fails the test on any SEVERE console entry
