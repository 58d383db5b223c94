"""Draw 20 filed entries at random (seed 20261130) and print each with the evidence for its filing:
the page its reader read (from the reading logs), its sub-categories and its `why`.

    python .notes/reading-2026-11-30/sample20.py
"""
import csv
import glob
import random
from pathlib import Path

import yaml

HERE = Path(__file__).parent
logs = {}
for path in sorted(HERE.glob("log-p*.tsv")) + sorted((HERE / "session2").glob("log-r*.tsv")):
    for row in csv.reader(path.open(encoding="utf-8"), delimiter="\t"):
        if len(row) >= 5 and row[1] == "filed":
            logs[row[0]] = (path.name, row[4])
entries = sorted(glob.glob(str(HERE.parents[1] / "papers" / "*" / "*.yaml")))
for path in random.Random(20261130).sample(entries, 20):
    d = yaml.safe_load(open(path, encoding="utf-8"))
    log, url = logs.get(d["id"], ("(entry filed before the reading logs)", d["url"]))
    print(f"- {d['id']} ({d['year']}, {d['venue']}) — {', '.join(map(str, d['subcategories'])) or 'no sub-category'}"
          f", {d.get('contribution', 'method')}, {d['classified_by']}\n  why: {d['why']}\n  read: {url} [{log}]")
