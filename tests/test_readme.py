"""The README's result blocks are exactly what the pipeline wrote (fedlib/readme.py)."""
from pathlib import Path

import pytest

from fedlib import readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_blocks_match_the_result_files():
    text = (ROOT / "README.md").read_text()
    names = [m.group(2) for m in readme.PATTERN.finditer(text)]
    assert set(names) == set(readme.BLOCKS), "every generated block appears in README.md once"
    assert readme.stale_blocks(text, ROOT) == [], "run `python -m fedlib.readme` after the pipeline"


def test_splice_replaces_only_the_blocks(tmp_path):
    (tmp_path / "results/report").mkdir(parents=True)
    (tmp_path / "results/report/headline.md").write_text("| a | 0.91 |\n")
    text = "intro 0.5\n<!-- generated: federated -->\nold 0.3\n<!-- /generated: federated -->\noutro\n"
    out = readme.splice(text, tmp_path)
    assert out.startswith("intro 0.5\n") and out.endswith("<!-- /generated: federated -->\noutro\n")
    assert "| a | 0.91 |" in out and "old 0.3" not in out
    assert readme.stale_blocks(out, tmp_path) == [] and readme.stale_blocks(text, tmp_path) == ["federated"]
    (tmp_path / "results/report/headline.md").write_text("| a | 0.92 |\n")      # a result changes
    assert readme.stale_blocks(out, tmp_path) == ["federated"]


def test_missing_result_names_its_command(tmp_path):
    text = "<!-- generated: lm -->\n<!-- /generated: lm -->\n"
    assert "dvc repro lm" in readme.splice(text, tmp_path)


def test_unknown_block_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="block 'nope' is not generated; allowed: headline, federated"):
        readme.splice("<!-- generated: nope -->\nx\n<!-- /generated: nope -->\n", tmp_path)


@pytest.mark.parametrize("pipeline,studies", [("dvc.yaml", False), ("notebooks/studies/dvc.yaml", True)])
def test_each_readme_stage_depends_on_every_file_its_blocks_show(pipeline, studies):
    """A result file shown in the README but missing from its readme stage's deps would let `dvc status`
    call a stale README up to date."""
    import yaml

    deps = set(yaml.safe_load((ROOT / pipeline).read_text())["stages"]["readme"]["deps"])
    shown = {path for files in readme.BLOCKS.values() for path, cmd in files if (cmd == readme.STUDIES) == studies}
    assert shown <= deps, sorted(shown - deps)
