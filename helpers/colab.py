"""The first code cell of every notebook, which installs the course's helpers in Google Colab.

Introduced in the preface ("How to run it"); a maintainer's tool::

    python -m helpers.colab          # write the cell into every notebook
    python -m helpers.colab --check  # list notebooks whose first cell differs

The cell installs ``helpers`` from the course's repository at the tag ``v<helpers.__version__>``,
with ``--no-deps`` so that Colab's own torch and torchvision are never replaced, and does nothing
outside Colab. The repository's URL is read from ``_config.yml`` (``repository.url``, which also
drives the book's launch buttons) and the tag from the package's version: to move either, change
it there, run this command, then execute the notebooks it rewrote again (a changed code cell
changes the notebook's code hash, so the tests reject it until it is executed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helpers

COLAB_MODULE = "google.colab"  # imported by every Colab kernel at start-up

CELL_TEMPLATE = """\
import sys

# Colab has torch already: install only the course's helpers.
if "google.colab" in sys.modules:
    %pip install --quiet --no-deps \\
        "{target}\""""

INTRO = ("The first cell of every notebook installs the course's `helpers` package when the notebook "
         "runs\nin Google Colab, and does nothing elsewhere (see the [preface](preface.md)).")


def repository_url(root: Path) -> str:
    """``repository.url`` from the book's ``_config.yml`` in the folder ``root``."""
    import yaml  # a maintainer's dependency: imported here so that Colab never needs it

    config_path = root / "_config.yml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: run this from the course's root folder")
    url = (yaml.safe_load(config_path.read_text(encoding="utf-8")).get("repository") or {}).get("url")
    if not url:
        raise ValueError(f"{config_path} has no repository.url: set it to the course repository's address")
    return url.rstrip("/")


def pinned_ref() -> str:
    """The git tag the cell installs: ``v`` followed by the package's version."""
    return f"v{helpers.__version__}"


def install_target(root: Path) -> str:
    """What the cell gives to pip: ``git+<repository url>@<tag>``."""
    return f"git+{repository_url(root)}@{pinned_ref()}"


def first_cell_source(root: Path) -> str:
    """The source of the first code cell every notebook in the book must have."""
    return CELL_TEMPLATE.format(target=install_target(root))


def first_code_cell(nb):
    """The notebook's first code cell, or None when it has none."""
    return next((cell for cell in nb.cells if cell.cell_type == "code"), None)


def write_first_cell(nb, source: str) -> bool:
    """Make ``source`` the notebook's first code cell; True when the notebook changed.

    A first code cell that mentions ``google.colab`` is an older version of the cell and is
    rewritten; otherwise the cell and its one-line introduction are inserted before the first
    code cell.
    """
    import nbformat

    cell = first_code_cell(nb)
    if cell is not None and COLAB_MODULE in cell.source:
        if cell.source == source:
            return False
        cell.source = source
        cell.outputs, cell.execution_count = [], None
        return True
    at = nb.cells.index(cell) if cell is not None else min(1, len(nb.cells))
    nb.cells[at:at] = [nbformat.v4.new_markdown_cell(INTRO), nbformat.v4.new_code_cell(source)]
    return True


def main(argv: list[str] | None = None) -> int:
    import nbformat

    from helpers.notebooks import book_notebooks

    parser = argparse.ArgumentParser(prog="python -m helpers.colab", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every notebook in book/)")
    parser.add_argument("--check", action="store_true", help="change nothing; list the notebooks "
                        "whose first code cell is not the course's Colab cell, and fail if there are any")
    args = parser.parse_args(argv)
    root = Path(".")  # the course's root; paths are shown relative to it
    source = first_cell_source(root)
    changed = []
    for path in args.paths or book_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        if write_first_cell(nb, source):
            changed.append(path)
            if not args.check:
                nbformat.write(nb, path)
    if not changed:
        print(f"Every notebook's first code cell installs {install_target(root)} in Colab.")
        return 0
    names = " ".join(str(p) for p in changed)
    if args.check:
        print(f"These notebooks' first code cell is not the course's Colab cell: {names}\n"
              "Run `python -m helpers.colab` to write it, then execute them again.")
        return 1
    print(f"Wrote the Colab cell (installing {install_target(root)}) into: {names}\n"
          f"Their code changed, so execute them again: python -m helpers.notebooks execute {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
