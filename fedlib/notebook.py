"""Run a parameterised notebook with papermill on the project kernel and render it to HTML.

    python -m fedlib.notebook notebooks/train.ipynb results/notebooks/train-fedavg.ipynb -p method fedavg

Parameters are parsed as YAML scalars (``-p seeds [0]`` gives a list). Before the kernel starts,
params.yaml is validated (``fedlib.check`` without the data checks) and every ``-p`` name and
value is checked against the notebook's parameters cell, so bad input fails in a second (inside
``dvc repro``, params content that already passed under the same code is not checked twice:
``validate_inputs``).

A failure is reported as ONE line on stderr (what went wrong, the key or file, what is allowed)
and exit status 2; the full traceback goes to ``runs/errors/<output name>.txt``, named in that
line. The kernel talks to papermill over local IPC sockets, not TCP: with no open TCP port the
kernel has nothing to warn about ("Kernel is running over TCP without encryption").
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import yaml

# jsonschema (under nbformat, so under papermill and nbconvert) imports rfc3987_syntax if present, which builds
# a Lark grammar at import: 1.5 s of every stage's runner for IRI format checks no notebook uses. A None entry
# makes that optional import fail, as if the package were absent (jsonschema then skips those two formats).
sys.modules.setdefault("rfc3987_syntax", None)

KERNEL = "fedlib"
ERRORS_DIR = Path("runs/errors")
# exceptions whose message is already the one line a user needs (key, value, what is allowed, what to do)
KNOWN = {"ParamsError", "DatasetUnavailable", "PartitionError", "DivergenceError", "FileNotFoundError",
         "ValueError"}


class NotebookError(RuntimeError):
    """A notebook cell raised; ``line`` is the one-line message, ``log`` the file with the traceback."""

    def __init__(self, line: str, log: Path):
        super().__init__(line)
        self.line, self.log = line, log


def _kernel_manager_class(socket_dir: str):
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        """The kernel's sockets are unix sockets in ``socket_dir``, a directory of this run's own: two notebooks
        run at once (two studies, two terminals) never pick the same socket names, and none is left in the
        working directory (jupyter_client's default for ipc is ./kernel-ipc-N)."""

        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            return os.path.join(socket_dir, "kernel-ipc")

    return IPCKernelManager


def run(source: str | Path, output: str | Path, parameters: dict | None = None, *, html: bool = True,
        cwd: str | Path | None = None) -> Path:
    """Execute ``source`` into ``output`` (and ``output``.html). A failing cell raises NotebookError."""
    import tempfile

    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    env_kernel = os.environ.get("FEDLIB_KERNEL", KERNEL)
    try:
        with tempfile.TemporaryDirectory(prefix="fedlib-kernel-") as sockets:
            pm.execute_notebook(str(source), str(output), parameters=parameters or {}, kernel_name=env_kernel,
                                cwd=str(cwd) if cwd else None, progress_bar=False, log_output=False,
                                kernel_manager_class=_kernel_manager_class(sockets))
    except pm.PapermillExecutionError as e:
        raise _one_line(e, source, output, Path(cwd or ".")) from None
    if html:
        write_html(output)
    return output


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(e, source, output: Path, cwd: Path) -> NotebookError:
    """The cell's exception as one line; its traceback (ANSI colours stripped) saved to a file."""
    log = cwd / ERRORS_DIR / f"{output.stem}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{source} -> {output}, cell {e.exec_count}\n\n" + ANSI.sub("", "\n".join(e.traceback)) + "\n")
    message = " ".join(str(e.evalue).split())           # one line, whatever the message held
    if e.ename in KNOWN:
        line = message if message.startswith(("params:", "partition:", "dataset", "data.")) else \
            f"{e.ename}: {message}"
    else:
        line = f"{source} failed with {e.ename}: {message}"
    return NotebookError(f"{line} (traceback: {ERRORS_DIR / log.name})", log)


def check_parameter_names(source: str | Path, parameters: dict) -> None:
    """Every -p name must be a parameter of the notebook."""
    import papermill as pm

    from fedlib.schema import ParamsError

    allowed = pm.inspect_notebook(str(source))
    for name in parameters:
        if name not in allowed:
            raise ParamsError(f"-p {name}: {source} has no parameter {name!r}; allowed: " + ", ".join(allowed))


def check_parameter_values(parameters: dict) -> None:
    """method and seed(s) values must be allowed."""
    from fedlib.algorithms import REGISTRY
    from fedlib.schema import Choice, Int, List, ParamsError

    fields = {"method": Choice(None, *sorted(REGISTRY)), "seed": Int(ge=0), "seeds": List(Int(ge=0), min_len=1)}
    for name, value in parameters.items():
        if name in fields and not (name == "seeds" and value is None):
            try:
                fields[name].check(name, value)
            except ParamsError as err:
                raise ParamsError(str(err).replace("params: ", f"-p {name}: ", 1)) from None


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


CHECKED = Path("runs/checked")      # one empty file per params digest that passed the full check (scratch)


def params_digest(params_file: str | Path) -> str:
    """sha256 of the params file's bytes and of every fedlib source file (the check's rules live in the schema,
    the sections, the algorithms' hyper-parameters and the stages' cross-key checks): equal digests mean the same
    values checked by the same rules."""
    import hashlib

    h = hashlib.sha256(Path(params_file).read_bytes())
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def validate_inputs(source: str | Path, params_file: str | Path, parameters: dict) -> None:
    """Everything a notebook's inputs must pass before its kernel starts. The -p names are always checked against
    the notebook's parameters cell (papermill would only warn). The full params check (fedlib.check, about 3.5 s
    of imports) and the -p values are skipped inside `dvc repro` (DVC_STAGE set: the -p values come from the
    validated params through dvc.yaml) when this exact params content already passed the check under this exact
    code (a file named by params_digest in runs/checked/, written after a passing check); otherwise they are
    checked and the digest is recorded. Across the default pipeline this saves about 70 s."""
    digest = params_digest(params_file)
    check_parameter_names(source, parameters)
    if os.environ.get("DVC_STAGE") and (CHECKED / digest).exists():
        return
    from fedlib.check import check

    check(params_file, data=False)
    check_parameter_values(parameters)
    CHECKED.mkdir(parents=True, exist_ok=True)
    (CHECKED / digest).touch()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("output")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--params-file", default="params.yaml")
    args = ap.parse_args(argv)
    from fedlib.schema import ParamsError

    try:
        params = {}
        for name, value in args.p:
            try:
                params[name] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ParamsError(f"-p {name} = {value!r} is not a YAML value; e.g. -p seeds '[0, 1]'") from None
        if not Path(args.source).exists():
            raise ParamsError(f"notebook {args.source} not found; the notebooks are in notebooks/")
        if not Path(args.params_file).exists():
            raise ParamsError(f"params: file {args.params_file} not found; run from the repository root or pass "
                                  "--params-file")
        validate_inputs(args.source, args.params_file, params)
        params.setdefault("params_path", args.params_file)
        run(args.source, args.output, params)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NotebookError as e:
        print(f"error: {e.line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
