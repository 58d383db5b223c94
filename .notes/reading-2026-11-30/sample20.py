"""Draw 20 filed entries at random and print each with the evidence for its filing: the page its
reader read (from the reading logs, the newest reading first), its sub-categories and its `why`.

    python .notes/reading-2026-11-30/sample20.py [SEED]     (default 20261130)
"""
import csv
import glob
import random
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
logs = {}
for path in sorted(HERE.glob("log-p*.tsv")) + sorted((HERE / "session2").glob("log-r*.tsv")):
    for row in csv.reader(path.open(encoding="utf-8"), delimiter="\t"):
        if len(row) >= 5 and row[1] == "filed":
            logs[row[0]] = (path.name, row[4])
# 2026-12-01: entries filed from papers/unread.yaml (id, decision, sub-categories, url, note)
third = HERE.parent / "reading-2026-12-01" / "log-h3.tsv"
if third.exists():
    for row in csv.reader(third.open(encoding="utf-8"), delimiter="\t"):
        if len(row) >= 4 and row[1] == "filed":
            logs[row[0]] = (third.name, row[3])
# the audit of 2026-12-01 re-read 60 entries against their papers: its page wins (path, verdict, note, url)
audit = HERE.parent / "reading-2026-12-01" / "log-h4.tsv"
if audit.exists():
    for row in csv.reader(audit.open(encoding="utf-8"), delimiter="\t"):
        if len(row) >= 4:
            logs[Path(row[0]).stem] = (audit.name, row[3])
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 20261130
entries = sorted(glob.glob(str(HERE.parents[1] / "papers" / "*" / "*.yaml")))
for path in random.Random(seed).sample(entries, 20):
    d = yaml.safe_load(open(path, encoding="utf-8"))
    log, url = logs.get(d["id"], ("(entry filed before the reading logs)", d["url"]))
    print(f"- {d['id']} ({d['year']}, {d['venue']}) — {', '.join(map(str, d['subcategories'])) or 'no sub-category'}"
          f", {d.get('contribution', 'method')}, {d['classified_by']}\n  why: {d['why']}\n  read: {url} [{log}]")
