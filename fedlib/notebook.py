"""Run a parameterised notebook with papermill on the project kernel and render it to HTML.

    python -m fedlib.notebook notebooks/train.ipynb results/notebooks/train-fedavg-0.ipynb \
        -p method fedavg -p seed 0

Parameters are parsed as YAML scalars (``-p seed 0`` gives an int). The params file is
validated before the kernel starts, so bad input fails in a second with a clear message.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

KERNEL = "fedlib"


def run(source: str | Path, output: str | Path, parameters: dict | None = None, *, html: bool = True,
        cwd: str | Path | None = None) -> Path:
    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    env_kernel = os.environ.get("FEDLIB_KERNEL", KERNEL)
    pm.execute_notebook(str(source), str(output), parameters=parameters or {}, kernel_name=env_kernel,
                        cwd=str(cwd) if cwd else None, progress_bar=False, log_output=False)
    if html:
        write_html(output)
    return output


STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;line-height:1.45}
pre,code{font-size:12px}.jp-InputArea pre,.input_area pre{background:#f5f6f8;padding:.6em;overflow-x:auto}
.jp-OutputArea pre,.output_area pre{padding:.3em .6em;overflow-x:auto}img{max-width:100%}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}.jp-InputPrompt,.jp-OutputPrompt{display:none}"""


def write_html(notebook: Path) -> Path:
    """A light HTML rendering (nbconvert's basic template, images embedded, a small stylesheet)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter(template_name="basic", embed_images=True).from_notebook_node(nb)
    out = notebook.with_suffix(".html")
    out.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{notebook.stem}</title>"
                   f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("output")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--params-file", default="params.yaml")
    args = ap.parse_args(argv)
    from fedlib.config import ParamsError, load_params

    try:
        load_params(args.params_file)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    params = {name: yaml.safe_load(value) for name, value in args.p}
    params.setdefault("params_path", args.params_file)
    run(args.source, args.output, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
