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


def write_html(notebook: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nbformat.read(notebook, as_version=4))
    out = notebook.with_suffix(".html")
    out.write_text(body)
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
