"""The README's pasted tables are the committed paper_figs tables, so no number in them is stale."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- (\S+): begin \(pasted from (\S+)\) -->\n(.*?)<!-- \1: end -->\n", re.S)


def test_every_pasted_table_matches_its_file():
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert {name for name, _, _ in blocks} >= {"table_recognition.md", "table_rl.md"}
    for name, source, text in blocks:
        assert text == (ROOT / source).read_text(), f"README's {name} differs from {source}: paste it again"
