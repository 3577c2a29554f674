"""Executing the book's notebooks, the only way their stored outputs are produced.

A maintainer's tool, described in the README::

    python -m helpers.notebooks execute book/dynamic_graph.ipynb [...]
    python -m helpers.notebooks check  # what the tests check

Executing a notebook runs every cell in order in a fresh kernel started from the notebook's
folder, then stamps the notebook's metadata (key ``course``) with a hash of its code cells and
the facts of the run (torch version, device, data source, quick mode, date). The test suite
recomputes the hash: a notebook whose code changed after its outputs were produced fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

STAMP_KEY = "course"
# Set in the kernels this module and the tests start, so that code can tell an executed,
# stored output (rendered later as HTML) from a live notebook: progress bars print plain lines.
EXECUTING_ENV = "COURSE_EXECUTING"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # the colours of terminal text: dropped from messages
_FACTS_CODE = "import helpers.runtime as _runtime\n_runtime.print_run_facts_json()"
QUICK_RUN = ("its outputs come from a quick-mode run (small stand-in data), not the full run readers "
             "get: execute it again without COURSE_QUICK")


def code_hash(nb) -> str:
    """SHA-256 of the notebook's code cells (their source and order; outputs and tags excluded)."""
    digest = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            digest.update(source.encode() + b"\0")
    return digest.hexdigest()


def problems(nb) -> list[str]:
    """What is wrong with a committed notebook, as sentences; empty when it is fit to commit."""
    found = []
    stamp = nb.get("metadata", {}).get(STAMP_KEY)
    if stamp is None:
        found.append("it was never executed by `python -m helpers.notebooks execute` (no stamp)")
    elif stamp.get("code_sha256") != code_hash(nb):
        found.append("its code changed after its outputs were produced: execute it again")
    elif stamp.get("quick_mode"):
        found.append(QUICK_RUN)
    if "widgets" in nb.get("metadata", {}):
        found.append("it stores widget state, which the book would load scripts for and not show")
    counts = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        if cell.get("execution_count") is None:
            found.append(f"code cell {i} was never executed, so nbval would compare nothing there")
        else:
            counts.append(cell["execution_count"])
        for out in cell.get("outputs", []):
            if out["output_type"] == "error" and "raises-exception" not in cell.get("metadata", {}).get("tags", []):
                found.append(f"code cell {i} stores an error ({out.get('ename')}) a reader would see")
            if out["output_type"] == "stream" and out.get("name") == "stderr":
                found.append(f"code cell {i} stores text on stderr (a warning?) a reader would see")
    if counts != sorted(counts) or len(set(counts)) != len(counts):
        found.append("its cells were not executed once each, top to bottom")
    return found


# For every kernel the course starts: its warning that it listens on localhost over unencrypted
# TCP is not news; its errors are still printed.
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]


def execute(path: Path, timeout: int = 1800, out: Path | None = None) -> dict:
    """Execute the notebook at ``path`` and stamp it; returns the stamp.

    ``timeout`` is the most seconds one cell may run. The executed notebook replaces the
    original, or is written to the folder ``out``, made if needed (how a run on another machine,
    such as the GPU machine, sends its notebooks back). A run that fails (a cell raised or ran
    out of time) or that is not fit to keep never replaces anything: it is written to
    ``out/rejected/`` (with ``out``) or to a new temporary folder, for reading, and a
    ``RuntimeError`` says where.
    """
    import nbformat
    from nbclient import NotebookClient

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)  # before the run: a run must never be lost at the end
    nb = nbformat.read(path, as_version=4)
    # One extra cell, run last in the same kernel, reports the facts of the run; it is removed
    # before the notebook is written.
    nb.cells.append(nbformat.v4.new_code_cell(_FACTS_CODE))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            extra_arguments=QUIET_KERNEL,
                            resources={"metadata": {"path": str(path.parent)}})
    previous = os.environ.get(EXECUTING_ENV)
    os.environ[EXECUTING_ENV] = "1"  # the kernel inherits the environment
    try:
        client.execute()
    except Exception as error:  # a cell raised, or ran out of time
        nb.cells.pop()
        rejected = _keep_rejected(nb, path, out)
        # The last line of nbclient's message names the exception; drop its terminal colours.
        message = ANSI_ESCAPE.sub("", str(error)).strip()
        last_line = (message.splitlines() or [type(error).__name__])[-1]
        raise RuntimeError(f"{path} failed to run ({type(error).__name__}: {last_line[:300]}). "
                           f"The partial run is in {rejected}; {path} is unchanged.") from error
    finally:
        if previous is None:
            del os.environ[EXECUTING_ENV]
        else:
            os.environ[EXECUTING_ENV] = previous
    facts_cell = nb.cells.pop()
    text = "".join(o.get("text", "") for o in facts_cell.outputs if o.output_type == "stream")
    facts = json.loads(text.strip().splitlines()[-1])
    stamp = {"code_sha256": code_hash(nb), **facts}
    nb.metadata[STAMP_KEY] = stamp
    # Jupyter and Colab need a kernelspec; an authoring tool's own metadata has no place here.
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.pop("jupytext", None)
    # Widgets are for live sessions; the book shows static figures, so no widget state is kept
    # (it would make the page load widget scripts from a CDN to show nothing).
    nb.metadata.pop("widgets", None)
    # A quick run is what was asked for (the command line refuses one over the book's notebooks).
    found = [problem for problem in problems(nb) if problem != QUICK_RUN]
    if found:
        # Keep the committed notebook as it was; leave the rejected run where it can be read.
        rejected = _keep_rejected(nb, path, out)
        raise RuntimeError(f"{path} ran, but its outputs are not fit to keep: " + "; ".join(found)
                           + f". The run is in {rejected}; {path} is unchanged.")
    nbformat.write(nb, path if out is None else out / path.name)
    return stamp


def _keep_rejected(nb, path: Path, out: Path | None) -> Path:
    """Write a run that must not replace ``path`` where it can be read; returns where."""
    import nbformat

    folder = out / "rejected" if out is not None else Path(tempfile.mkdtemp(prefix="rejected-"))
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / path.name)
    return folder / path.name


def book_notebooks(root: Path) -> list[Path]:
    return sorted((root / "book").rglob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.notebooks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("execute", help="execute notebooks in place and stamp them")
    run.add_argument("paths", nargs="+", type=Path)
    run.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    run.add_argument("--out", type=Path, help="write the executed notebooks into this folder "
                     "instead of replacing the originals")
    chk = sub.add_parser("check", help="report notebooks that are stale, unexecuted or noisy")
    chk.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)

    if args.command == "execute":
        from helpers.runtime import quick_mode

        if quick_mode() and args.out is None:
            parser.error("COURSE_QUICK is set: a quick-mode run would replace the full-run outputs "
                         "the notebooks keep. Unset COURSE_QUICK, or write the run elsewhere with --out.")
        for path in args.paths:
            if not path.exists():
                parser.error(f"{path} does not exist")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        # Every notebook gets its turn even when an earlier one fails: on a borrowed GPU machine
        # one run must bring back as much as it can.
        failed = 0
        for path in args.paths:
            start = time.perf_counter()
            try:
                stamp = execute(path, args.timeout, args.out)
            except RuntimeError as error:
                failed += 1
                print(f"{path}: NOT kept, after {time.perf_counter() - start:.0f} s. {error}",
                      file=sys.stderr, flush=True)
                continue
            print(f"{path}: executed in {time.perf_counter() - start:.0f} s on {stamp['device']} "
                  f"(quick mode: {stamp['quick_mode']}, data: {stamp['data_source']})", flush=True)
        return 1 if failed else 0

    import nbformat
    paths = args.paths or book_notebooks(Path.cwd())
    if not paths:  # an empty list would read as "all clean"
        print(f"no notebooks under {Path.cwd() / 'book'}: run this from the repository's root, or name "
              f"the notebooks", file=sys.stderr)
        return 1
    bad = 0
    for path in paths:
        for problem in problems(nbformat.read(path, as_version=4)):
            print(f"{path}: {problem}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
