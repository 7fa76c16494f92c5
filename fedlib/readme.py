"""The README's result sections, generated from the committed result files.

README.md holds blocks between ``<!-- generated: NAME -->`` and ``<!-- /generated: NAME -->``. Each
block is the concatenation of the Markdown files the pipeline wrote for it (``BLOCKS``), so every number
a reader sees in the README is one a stage wrote; nothing in a block is typed by hand.

    python -m fedlib.readme            rewrite the blocks of README.md from the result files
    python -m fedlib.readme --check    exit 1 (naming the block) if README.md differs from them

The ``readme`` stage of dvc.yaml runs the first form after every stage it depends on; the test suite
runs the second, so a README that drifts from the results fails CI.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# block name -> the Markdown files it shows, in order: (path, command that builds it), included as they are.
# A file that does not exist yet is shown as a line naming the command that builds it.
STUDIES = "dvc repro notebooks/studies/dvc.yaml"
BLOCKS: dict[str, list[tuple]] = {
    "headline": [("results/studies/fedwmsam/claims.md", STUDIES)],
    "federated": [("results/report/headline.md", "dvc repro report"),
                  ("results/report/costs.md", "dvc repro report"),
                  ("results/report/diagnostics.md", "dvc repro report"),
                  ("results/ablation/table.md", "dvc repro ablation")],
    "split": [("results/split/report/costs.md", "dvc repro split_report")],
    "analysis": [("results/analysis/bounds/table.md", "dvc repro bounds"),
                 ("results/analysis/flatness/table.md", "dvc repro flatness")],
    "lm": [("results/lm/accuracy.md", "dvc repro lm"), ("results/lm/memory.md", "dvc repro lm")],
    "study_fedwmsam": [("results/studies/fedwmsam/table1.md", STUDIES),
                       ("results/studies/fedwmsam/table3.md", STUDIES),
                       ("results/studies/fedwmsam/diagnostics.md", STUDIES),
                       ("results/studies/fedwmsam/ablation.md", STUDIES)],
    "study_split": [("results/studies/musplitfed/tau_cut.md", STUDIES),
                    ("results/studies/musplitfed/stragglers.md", STUDIES),
                    ("results/studies/heron/table.md", STUDIES),
                    ("results/studies/split_costs/costs.md", STUDIES)],
    "study_lm": [("results/studies/lm/methods/accuracy.md", STUDIES), ("results/studies/lm/tau_cut.md", STUDIES),
                 ("results/studies/lm/memory.md", STUDIES)],
    "study_analysis": [("results/studies/analysis/sweeps/table.md", STUDIES)],
}
PATTERN = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- /generated: \2 -->)", re.S)


def render(name: str, root: Path) -> str:
    parts = []
    for rel, command in BLOCKS[name]:
        path = root / rel
        if not path.exists():
            parts.append(f"*`{rel}` has not been built yet: `{command}`.*\n")
            continue
        body = path.read_text().strip()
        parts.append(f"<!-- from {rel} -->\n{body}\n")
    return "\n".join(parts)


def splice(text: str, root: Path) -> str:
    """README text with every generated block replaced by its rendering."""
    unknown = [m.group(2) for m in PATTERN.finditer(text) if m.group(2) not in BLOCKS]
    if unknown:
        raise ValueError(f"readme: block {unknown[0]!r} is not generated; allowed: {', '.join(BLOCKS)}")
    return PATTERN.sub(lambda m: m.group(1) + render(m.group(2), root) + m.group(4), text)


def stale_blocks(text: str, root: Path) -> list[str]:
    return [m.group(2) for m in PATTERN.finditer(text)
            if m.group(3) != render(m.group(2), root)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--check", action="store_true", help="only report blocks that differ from the results")
    args = ap.parse_args(argv)
    path = Path(args.readme)
    root = path.resolve().parent
    text = path.read_text()
    if args.check:
        stale = stale_blocks(text, root)
        if stale:
            print(f"readme: block(s) {', '.join(stale)} of {path} differ from the result files; "
                  "run `python -m fedlib.readme`", file=sys.stderr)
            return 1
        return 0
    path.write_text(splice(text, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
