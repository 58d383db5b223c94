/* Low-Bit Atlas: filter and sort the all-papers table (docs/generated/papers.md).

   The generator (site_gen/templates/papers_table.html.j2) writes every paper as a <tr> with data-*
   attributes: data-id, data-year, data-venue, data-subs and data-tags ("|"-separated),
   data-code ("1"/"0"), data-refimpl ("|"-separated technique ids) and, when known,
   data-authors. This script builds the controls from those attributes, hides the rows that do
   not match and keeps "#papers-count" at "N of M papers". Without JavaScript the page shows
   the whole table.

   Rules: plain DOM only, nothing loaded from elsewhere (the site works offline); text from the
   data is only ever placed with textContent / option labels, never parsed as HTML; the filter
   state lives in the address bar's query (?q=&year=&venue=&sub=&tag=&code=1&refimpl=1&sort=)
   so that a filtered view can be shared. Works with Material's instant navigation on or off. */
(function () {
  "use strict";

  var STYLE = [
    ".atlas-filter{display:flex;flex-wrap:wrap;gap:.5rem .7rem;align-items:center;margin:1em 0 .4em}",
    ".atlas-filter input[type=search],.atlas-filter select{font:inherit;font-size:.7rem;",
    "padding:.25rem .4rem;border:1px solid var(--md-default-fg-color--lighter);border-radius:.2rem;",
    "background:var(--md-default-bg-color);color:var(--md-default-fg-color)}",
    ".atlas-filter input[type=search]{flex:1 1 100%}",
    ".atlas-filter select{flex:0 1 auto;max-width:10rem}",
    ".atlas-filter label{font-size:.7rem;white-space:nowrap;cursor:pointer}",
    ".atlas-filter button{font:inherit;font-size:.7rem;padding:.25rem .7rem;cursor:pointer;",
    "border:1px solid var(--md-accent-fg-color);border-radius:.2rem;background:transparent;",
    "color:var(--md-accent-fg-color)}",
    ".atlas-papers-count{font-weight:700;margin:.2em 0 .6em}",
    // Seven columns in the content width: narrow cells everywhere but the title's.
    "#papers-table th{min-width:0}",
    "#papers-table th,#papers-table td{padding:.6em .7em}",
    "#papers-table td:nth-child(2){min-width:16em}",
    ".atlas-aliases{color:var(--md-default-fg-color--light)}"
  ].join("");

  // Query keys of the select filters -> [row attribute, label of the "any" choice].
  var SELECTS = {
    year: ["year", "Any year"], venue: ["venue", "Any venue"],
    sub: ["subs", "Any sub-category"], tag: ["tags", "Any tag"]
  };
  var SORTS = [
    ["year-desc", "Newest first"], ["year-asc", "Oldest first"], ["title", "Title A\u2013Z"],
    ["venue", "Venue A\u2013Z"], ["sub", "Sub-category"]
  ];

  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      if (key === "text") node.textContent = props[key];
      else node.setAttribute(key, props[key]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function split(value) {
    return (value || "").split("|").filter(function (part) { return part !== ""; });
  }

  // "3.10" after "3.9": compare dotted section numbers part by part.
  function compareSections(a, b) {
    var pa = a.split("."), pb = b.split(".");
    for (var i = 0; i < Math.max(pa.length, pb.length); i++) {
      var d = (parseInt(pa[i] || "0", 10) || 0) - (parseInt(pb[i] || "0", 10) || 0);
      if (d) return d;
    }
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function compareText(a, b) {
    return a.localeCompare(b, undefined, { sensitivity: "base", numeric: true });
  }

  // One record per row: what the filters and sorts read, computed once.
  function readRows(tbody) {
    return Array.prototype.map.call(tbody.rows, function (tr, index) {
      var d = tr.dataset;
      var titleCell = tr.cells[1];
      return {
        tr: tr, index: index, year: d.year || "", venue: d.venue || "",
        subs: split(d.subs), tags: split(d.tags), code: d.code === "1",
        refimpl: split(d.refimpl).length > 0,
        title: titleCell ? titleCell.textContent.trim() : "",
        haystack: [tr.textContent, d.id || "", d.authors || ""].join(" ").toLowerCase()
      };
    });
  }

  // Sub-category names come from the title="" of the section links in the table.
  function sectionNames(tbody) {
    var names = Object.create(null);  // keys come from the data: no prototype to collide with
    Array.prototype.forEach.call(tbody.querySelectorAll("td a[title]"), function (a) {
      names[a.textContent] = a.getAttribute("title");
    });
    return names;
  }

  function countValues(rows, attr) {
    var counts = Object.create(null);
    rows.forEach(function (r) {
      var values = Array.isArray(r[attr]) ? r[attr] : [r[attr]];
      values.forEach(function (v) { if (v !== "") counts[v] = (counts[v] || 0) + 1; });
    });
    return counts;
  }

  function buildSelect(key, rows, names) {
    var attr = SELECTS[key][0];
    var counts = countValues(rows, attr);
    var values = Object.keys(counts);
    if (key === "year") values.sort(function (a, b) { return b - a; });
    else if (key === "sub") values.sort(compareSections);
    else values.sort(compareText);
    var select = el("select", { id: "papers-" + key, "aria-label": SELECTS[key][1] },
                    [el("option", { value: "", text: SELECTS[key][1] })]);
    values.forEach(function (v) {
      var label = key === "sub" && names[v] ? v + " " + names[v] : v;
      select.appendChild(el("option", { value: v, text: label + " (" + counts[v] + ")" }));
    });
    return select;
  }

  function checkbox(id, text) {
    var box = el("input", { type: "checkbox", id: id });
    return [box, el("label", { "for": id }, [box, document.createTextNode(" " + text)])];
  }

  function sorter(kind) {
    return function (a, b) {
      var d = 0;
      if (kind === "year-asc") d = a.year - b.year;
      else if (kind === "title") d = compareText(a.title, b.title);
      else if (kind === "venue") d = compareText(a.venue, b.venue);
      else if (kind === "sub") d = compareSections(a.subs[0] || "", b.subs[0] || "");
      // Ties (and "year-desc", the generator's own order) keep the order the page came in.
      return d || a.index - b.index;
    };
  }

  function init(table) {
    if (table.dataset.atlasFilter === "ready" || !table.tBodies.length) return;
    table.dataset.atlasFilter = "ready";
    var tbody = table.tBodies[0];
    var host = document.getElementById("papers-filter");
    var count = document.getElementById("papers-count");
    var rows = readRows(tbody);
    var names = sectionNames(tbody);
    var total = rows.length;
    var sortedBy = SORTS[0][0];  // the generator writes the rows newest first

    if (!document.getElementById("atlas-filter-style")) {
      document.head.appendChild(el("style", { id: "atlas-filter-style", text: STYLE }));
    }
    var q = el("input", { type: "search", id: "papers-q", placeholder: "Search titles, venues, tags, ids, authors\u2026",
                          "aria-label": "Search the papers", autocomplete: "off" });
    var selects = {};
    Object.keys(SELECTS).forEach(function (key) { selects[key] = buildSelect(key, rows, names); });
    var code = checkbox("papers-has-code", "has code");
    var refimpl = checkbox("papers-has-refimpl", "has ref. impl.");
    refimpl[1].setAttribute("title", "has a reference implementation in this repository");
    var sort = el("select", { id: "papers-sort", "aria-label": "Sort" });
    SORTS.forEach(function (s) { sort.appendChild(el("option", { value: s[0], text: s[1] })); });
    var reset = el("button", { type: "button", id: "papers-reset", text: "Reset" });
    var controls = [q, selects.year, selects.venue, selects.sub, selects.tag, code[1], refimpl[1], sort, reset];
    if (!host) {
      host = el("div", { id: "papers-filter", "class": "atlas-filter" });
      table.parentNode.insertBefore(host, table);
    }
    controls.forEach(function (c) { host.appendChild(c); });
    host.setAttribute("role", "search");

    function state() {
      var s = { q: q.value.trim(), code: code[0].checked ? "1" : "", refimpl: refimpl[0].checked ? "1" : "",
                sort: sort.value === SORTS[0][0] ? "" : sort.value };
      Object.keys(selects).forEach(function (key) { s[key] = selects[key].value; });
      return s;
    }

    function apply() {
      var s = state();
      var words = s.q.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      rows.forEach(function (r) {
        var ok = (!s.year || r.year === s.year) && (!s.venue || r.venue === s.venue) &&
          (!s.sub || r.subs.indexOf(s.sub) >= 0) && (!s.tag || r.tags.indexOf(s.tag) >= 0) &&
          (!s.code || r.code) && (!s.refimpl || r.refimpl) &&
          words.every(function (w) { return r.haystack.indexOf(w) >= 0; });
        r.tr.hidden = !ok;
        if (ok) shown += 1;
      });
      if (sort.value !== sortedBy) {  // moving 900 rows on every keystroke would be wasted work
        rows.slice().sort(sorter(sort.value)).forEach(function (r) { tbody.appendChild(r.tr); });
        sortedBy = sort.value;
      }
      if (count) count.textContent = shown + " of " + total + " papers";
      remember(s);
    }

    function remember(s) {
      var params = new URLSearchParams(window.location.search);
      Object.keys(s).forEach(function (key) {
        if (s[key]) params.set(key, s[key]); else params.delete(key);
      });
      var query = params.toString();
      var url = window.location.pathname + (query ? "?" + query : "") + window.location.hash;
      try { window.history.replaceState(window.history.state, "", url); } catch (e) { /* file:// pages may refuse; the filter still works */ }
    }

    function restore() {
      var params = new URLSearchParams(window.location.search);
      q.value = params.get("q") || "";
      Object.keys(selects).forEach(function (key) {
        var wanted = params.get(key) || "";
        // Only a value that exists among the options; anything else falls back to "any".
        selects[key].value = Array.prototype.some.call(selects[key].options, function (o) {
          return o.value === wanted;
        }) ? wanted : "";
      });
      code[0].checked = params.get("code") === "1";
      refimpl[0].checked = params.get("refimpl") === "1";
      var wantedSort = params.get("sort") || SORTS[0][0];
      sort.value = SORTS.some(function (s) { return s[0] === wantedSort; }) ? wantedSort : SORTS[0][0];
    }

    q.addEventListener("input", apply);
    [selects.year, selects.venue, selects.sub, selects.tag, code[0], refimpl[0], sort].forEach(function (c) {
      c.addEventListener("change", apply);
    });
    reset.addEventListener("click", function () {
      q.value = "";
      Object.keys(selects).forEach(function (key) { selects[key].value = ""; });
      code[0].checked = refimpl[0].checked = false;
      sort.value = SORTS[0][0];
      apply();
      q.focus();
    });
    restore();
    apply();
  }

  function start() {
    var table = document.getElementById("papers-table");
    if (table) init(table);
  }

  // With instant navigation off (this site's setting) the page loads normally and
  // DOMContentLoaded is enough; with it on, Material swaps pages without a reload and announces
  // each on document$. Both are wired: init() runs at most once per table.
  if (window.document$ && typeof window.document$.subscribe === "function") {
    window.document$.subscribe(start);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
