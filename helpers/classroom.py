"""Student editions of the book's notebooks, grading of submitted ones, and the exercise table.

Introduced in the page "Instructor guide" (book/instructor_guide.md); an instructor's tool:

    python -m helpers.classroom student-edition OUTDIR [NOTEBOOK ...]
    python -m helpers.classroom grade SUBMISSIONS --report OUTDIR [--timeout 600] [--full]
    python -m helpers.classroom exercise-table [--write]

The book is the instructor edition. In a student edition each solution cell (tagged
``solution``; it holds only function definitions with docstrings) becomes starter code: the same
signatures and docstrings, each body replaced by ``raise NotImplementedError``, which the check
reports as "not done yet" with a hint. The outputs of the exercise cells (solution and check
cells) are cleared; everything else is kept.

Grading runs each submitted notebook in its own kernel, with a time limit per cell (a cell that
runs longer is interrupted and the run goes on), in quick mode unless told otherwise, with
``COURSE_GRADING_LOG`` naming a file where every check appends its verdict (see
helpers.exercises). It writes ``grades.csv`` and ``grades.md`` (a table, then the messages of
every check that did not pass) and the executed notebooks.
"""

from __future__ import annotations

import argparse
import ast
import copy
import csv
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from helpers.exercises import CHECK_ERROR, EXERCISES, FAILED, GRADING_LOG_ENV, NOT_DONE, PASSED
from helpers.notebooks import QUIET_KERNEL
from helpers.runtime import QUICK_ENV

SOLUTION_TAG = "solution"
NOT_RUN = "not run"  # an exercise the notebook should have checked, with no verdict logged
TIMED_OUT = "timed out"  # an exercise whose check was still running at the time limit
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.]+)["']""")
_MARKS = {PASSED: "✅", FAILED: "❌", NOT_DONE: "⏳", CHECK_ERROR: "⚠️ check error", NOT_RUN: "not run",
          TIMED_OUT: "⌛ timed out"}
# How long an interrupted cell has to stop (and a finished cell's last outputs to arrive): a
# kernel that does not stop by then is ended, with the rest of its notebook.
INTERRUPT_GRACE = 10
_TIMEOUT_ERROR = "CellTimedOut"  # the error nbclient records for a cell it interrupted


# --- Which cells are exercise cells ----------------------------------------------------------

def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def checked_exercises(cell) -> list[str]:
    """The exercise names a code cell passes to ``check("<name>", ...)``, in order."""
    return _CHECK_CALL.findall(cell.source) if cell.cell_type == "code" else []


def is_exercise_cell(cell) -> bool:
    return is_solution_cell(cell) or bool(checked_exercises(cell))


# --- Student editions ------------------------------------------------------------------------

def starter_code(source: str, where: str = "a solution cell") -> str:
    """``source`` with the body of each top-level function replaced by ``raise NotImplementedError``.

    Signatures, decorators, docstrings, imports and comments outside the bodies are kept as
    written. Anything else in the cell (a constant, a call, a class) is refused: a solution cell
    holds only function definitions, each with a docstring, which becomes the task.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    replacements = []  # (first line, last line, new text), 1-based and inclusive
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            raise ValueError(f"{where}: line {node.lineno} is not a function definition "
                             f"({type(node).__name__}), but a solution cell may hold only function "
                             "definitions (and imports); move it to another cell or into a function")
        if ast.get_docstring(node) is None:
            raise ValueError(f"{where}: give `{node.name}` a docstring: the student edition keeps "
                             "it as the statement of the task")
        docstring = node.body[0]
        if docstring.end_lineno == node.lineno:
            raise ValueError(f"{where}: put the body of `{node.name}` on the lines after its `def`")
        indent = " " * docstring.col_offset
        stub = (f'{indent}raise NotImplementedError("{node.name}: replace this line with your '
                f'code")\n')
        replacements.append((docstring.end_lineno + 1, node.end_lineno, stub))
    for first, last, stub in reversed(replacements):
        lines[first - 1:last] = [stub]
    return "".join(lines).rstrip("\n")


def student_edition(nb, where: str = "notebook"):
    """A copy of ``nb`` with starter code in its solution cells and its exercise cells cleared."""
    student = copy.deepcopy(nb)
    for i, cell in enumerate(student.cells):
        if is_solution_cell(cell):
            cell.source = starter_code(cell.source, f"{where}, cell {i}")
        if is_exercise_cell(cell):
            cell.outputs, cell.execution_count = [], None
    # The stamp describes the instructor edition's run, not this one.
    student.metadata["course"] = {"edition": "student"}
    return student


def has_exercises(nb) -> bool:
    return any(is_exercise_cell(cell) for cell in nb.cells)


def write_student_editions(paths: list[Path], out: Path) -> list[Path]:
    """Write the student edition of each notebook that has exercises into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if has_exercises(nb):
            nbformat.write(student_edition(nb, str(path)), out / path.name)
            written.append(out / path.name)
    return written


# --- Grading ---------------------------------------------------------------------------------

@dataclass
class Submission:
    """One submitted notebook: how its run went and the verdicts its checks logged."""

    name: str  # its path relative to the submissions folder
    outcome: str = "ran"  # or "timed out ...", "raised ...", "not a valid notebook ...", ...
    expected: list[str] = field(default_factory=list)  # exercises it should check
    verdicts: dict[str, dict] = field(default_factory=dict)  # exercise -> {"status", "message"}

    def status(self, exercise: str) -> str:
        if exercise not in self.expected:
            return ""
        return self.verdicts.get(exercise, {}).get("status", NOT_RUN)

    @property
    def passed(self) -> int:
        return sum(self.status(e) == PASSED for e in self.expected)


def chapter_of(exercise: str) -> str:
    return exercise.split(".")[0]


def expected_exercises(names: list[str], fallback: str = "") -> list[str]:
    """Every registered exercise of the chapters that ``names`` belong to, in registry order.

    With no names (a file that could not be read, or one without any check), ``fallback`` (the
    file's name) is used: a file named exactly like a chapter's notebook (``training.ipynb``) is
    expected to check that chapter's exercises.
    """
    chapters = {chapter_of(n) for n in names} or {Path(fallback).stem}
    return [e for e in EXERCISES if chapter_of(e) in chapters]


def _first_line(text: str, limit: int = 120) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _log_lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def grade_notebook(path: Path, timeout: float, quick: bool = True, executed: Path | None = None,
                   name: str | None = None) -> Submission:
    """Run one submitted notebook in a fresh kernel and collect its verdicts.

    Every cell runs, even after one raises (the first error is reported). A cell gets ``timeout``
    seconds; then it is interrupted, the exercise whose check it was running is "timed out",
    and the run goes on with the next cell. The executed notebook is written to ``executed``
    when given.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    import helpers

    submission = Submission(name or path.name)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # not JSON, or not a notebook
        submission.outcome = f"not a valid notebook ({type(error).__name__}: {_first_line(error)})"
        submission.expected = expected_exercises([], path.name)
        return submission
    submission.expected = expected_exercises([n for c in nb.cells for n in checked_exercises(c)
                                              if n in EXERCISES], path.name)

    with tempfile.TemporaryDirectory(prefix="grading-") as workdir:
        log = Path(workdir) / "verdicts.jsonl"
        env = dict(os.environ, **{GRADING_LOG_ENV: str(log)})
        env.pop(QUICK_ENV, None)
        if quick:
            env[QUICK_ENV] = "1"
        # The kernel imports the same helpers as this command, wherever it runs from.
        package_root = str(Path(helpers.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        logged_before = {}  # cell index -> verdicts logged before the cell ran
        timed_out = {}  # cell index -> verdicts logged before it was interrupted
        started = {}  # the cell running, and when it started

        def starting(cell, cell_index, **_):
            logged_before[cell_index] = len(_log_lines(log))
            started.update(cell=cell_index, at=time.monotonic())

        def finished(cell, cell_index, execute_reply, **_):
            if (execute_reply or {}).get("content", {}).get("ename") == _TIMEOUT_ERROR:
                timed_out[cell_index] = len(_log_lines(log))

        # nbclient logs timeouts and dead kernels, which the outcome reports.
        quiet = logging.getLogger(f"{__name__}.nbclient")
        quiet.setLevel(logging.CRITICAL)
        client = NotebookClient(
            nb, timeout=max(1, math.ceil(timeout)), kernel_name="python3", allow_errors=True,
            interrupt_on_timeout=True, raise_on_iopub_timeout=True, iopub_timeout=INTERRUPT_GRACE,
            error_on_timeout={"ename": _TIMEOUT_ERROR, "evalue": f"interrupted after {timeout:g} s",
                              "traceback": []},
            on_cell_execute=starting, on_cell_executed=finished, shutdown_kernel="immediate",
            extra_arguments=QUIET_KERNEL,
            resources={"metadata": {"path": workdir}}, log=quiet)
        outcome = []
        try:
            client.execute(env=env)
        except CellTimeoutError:  # the cell's outputs, or its end after an interrupt, never came
            stuck = started.get("cell", 0)
            if time.monotonic() - started.get("at", 0) < timeout:
                outcome.append(f"the outputs of cell {stuck + 1} did not all arrive within "
                               f"{INTERRUPT_GRACE} s of its end: the later cells did not run")
            else:
                timed_out[stuck] = len(_log_lines(log))
                outcome.append(f"timed out after {timeout:g} s in cell {stuck + 1} and did not stop when "
                               "interrupted: the later cells did not run")
        except DeadKernelError:
            outcome.append("the kernel died (did the notebook exit Python or run out of memory?)")
        except Exception as error:
            outcome.append(f"could not be run ({type(error).__name__}: {_first_line(error)})")
        else:
            if timed_out:
                where = " and ".join(str(i + 1) for i in sorted(timed_out))
                outcome.append(f"timed out after {timeout:g} s in cell{'s' if len(timed_out) > 1 else ''} "
                               f"{where}, interrupted; the later cells ran")
            errors = [(i, out) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
                      and i not in timed_out
                      and "raises-exception" not in cell.get("metadata", {}).get("tags", [])
                      for out in cell.get("outputs", []) if out.output_type == "error"]
            if errors:
                i, out = errors[0]
                more = f" (and {len(errors) - 1} more cells)" if len(errors) > 1 else ""
                outcome.append(f"raised {out.ename} in cell {i + 1}: {_first_line(out.evalue)}{more}")
        submission.outcome = "; ".join(outcome) or "ran"
        # The verdicts in the order they were given, the last one of an exercise counting. A cell
        # that timed out had logged the verdicts of its checks before the one it was running.
        events = []
        for position, line in enumerate(_log_lines(log)):
            try:
                verdict = json.loads(line)
                events.append((position, verdict["exercise"], verdict))
            except (ValueError, KeyError, TypeError):
                continue
        for i, logged in timed_out.items():
            names = checked_exercises(nb.cells[i])[logged - logged_before.get(i, logged):]
            if names:
                events.append((logged - 0.5, names[0], {
                    "exercise": names[0], "status": TIMED_OUT,
                    "message": f"its check was still running after {timeout:g} s and was interrupted "
                               "(does the answer loop forever?)"}))
        for _, exercise, verdict in sorted(events, key=lambda event: event[0]):
            submission.verdicts[exercise] = verdict
    if executed is not None:
        target = executed / submission.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    return submission


def grade(folder: Path, report: Path, timeout: float = 600, quick: bool = True,
          progress=print) -> list[Submission]:
    """Grade every ``*.ipynb`` under ``folder`` and write the report into ``report``."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder: give the folder that holds the submitted notebooks")
    paths = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not paths:
        raise FileNotFoundError(f"there are no .ipynb files under {folder}")
    report.mkdir(parents=True, exist_ok=True)
    submissions = []
    for path in paths:
        name = path.relative_to(folder).as_posix()
        submission = grade_notebook(path, timeout, quick, report / "executed", name)
        progress(f"{name}: {submission.passed} of {len(submission.expected)} passed; {submission.outcome}")
        submissions.append(submission)
    write_report(submissions, report)
    return submissions


def write_report(submissions: list[Submission], report: Path) -> None:
    """``grades.csv`` (one row per submission, one column per exercise) and ``grades.md``."""
    exercises = [e for e in EXERCISES if any(e in s.expected for s in submissions)]
    with open(report / "grades.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "outcome", "passed", "out_of", *exercises])
        for s in submissions:
            writer.writerow([s.name, s.outcome, s.passed, len(s.expected), *(s.status(e) for e in exercises)])

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["# Grades", "",
             f"Submissions: {len(submissions)}. ✅ passed, ❌ failed, ⏳ not done (starter code), "
             "⌛ timed out (the check was interrupted), ⚠️ check error (a bug of the check itself, "
             "not of the answer), 'not run': no verdict (the check cell is missing, or the run "
             "stopped before it).", "",
             "| submission | outcome | passed | " + " | ".join(f"`{e}`" for e in exercises) + " |",
             "|---|---|---|" + "---|" * len(exercises)]
    for s in submissions:
        marks = [_MARKS.get(s.status(e), s.status(e)) for e in exercises]
        lines.append(f"| {cell(s.name)} | {cell(s.outcome)} | {s.passed} of {len(s.expected)} | "
                     + " | ".join(marks) + " |")
    details = []
    for s in submissions:
        notes = [f"- `{e}`: {cell(s.verdicts[e]['message'])}" if e in s.verdicts else f"- `{e}`: not run"
                 for e in s.expected if s.status(e) != PASSED]
        if s.outcome != "ran":
            notes.insert(0, f"- outcome: {cell(s.outcome)}")
        if notes:
            details += [f"### {cell(s.name)}", "", *notes, ""]
    lines += ["", "## What did not pass", "", *(details or ["Everything passed."])]
    (report / "grades.md").write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


# --- The instructor guide's table of exercises -----------------------------------------------

TABLE_START, TABLE_END = "% exercise-table: start", "% exercise-table: end"
GUIDE = Path("book") / "instructor_guide.md"


def _chapter_title(path: Path) -> str:
    """The ``# Title`` of a chapter's notebook."""
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            return cell.source.splitlines()[0][2:].strip()
    return path.stem


def _toc_order(root: Path) -> list[str]:
    import yaml  # a maintainer's dependency

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [Path(c["file"]).name for part in toc.get("parts", []) for c in part["chapters"]]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def exercise_table(root: Path) -> str:
    """Markdown: for each chapter in the book's order, a table of its registered exercises."""
    order = _toc_order(root)
    chapters = sorted({chapter_of(e) for e in EXERCISES},
                      key=lambda c: (order.index(c) if c in order else len(order), c))
    parts = []
    for chapter in chapters:
        notebook = root / "book" / f"{chapter}.ipynb"
        in_book = chapter in order and notebook.exists()
        chapter_exercises = [e for e in EXERCISES.values() if chapter_of(e.name) == chapter]
        minutes = sum(e.minutes for e in chapter_exercises)
        # Link only to a chapter the book builds: a link to any other page breaks the build.
        where = f"[the chapter]({chapter}.ipynb)" if in_book else f"`book/{chapter}.ipynb`, not in the book yet"
        parts += [f"### {_chapter_title(notebook) if notebook.exists() else chapter}", "",
                  f"{_count(len(chapter_exercises), 'exercise')}, about {minutes} minutes ({where}).", "",
                  "| Exercise (check name) | Practises | Minutes |", "|---|---|---:|"]
        parts += [f"| {e.title} (`{e.name}`) | {e.practises.replace('|', chr(92) + '|')} | {e.minutes} |"
                  for e in chapter_exercises]
        parts.append("")
    total = sum(e.minutes for e in EXERCISES.values())
    parts.append(f"In all: {_count(len(EXERCISES), 'exercise')} in {_count(len(chapters), 'chapter')}, "
                 f"about {total} minutes.")
    return "\n".join(parts)


def guide_with_table(guide_text: str, table: str) -> str:
    """``guide_text`` with the text between the table markers replaced by ``table``."""
    if TABLE_START not in guide_text or TABLE_END not in guide_text:
        raise ValueError(f"the guide has no lines {TABLE_START!r} and {TABLE_END!r} to put the table between")
    before, rest = guide_text.split(TABLE_START, 1)
    _, after = rest.split(TABLE_END, 1)
    return f"{before}{TABLE_START}\n{table}\n{TABLE_END}{after}"


# --- Command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from helpers.notebooks import book_notebooks

    parser = argparse.ArgumentParser(prog="python -m helpers.classroom", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    edition = sub.add_parser("student-edition", help="write the student edition of notebooks")
    edition.add_argument("out", type=Path, help="the folder to write them into")
    edition.add_argument("paths", nargs="*", type=Path,
                         help="notebooks (default: every notebook in book/ that has exercises)")
    grading = sub.add_parser("grade", help="run submitted notebooks and report their checks")
    grading.add_argument("submissions", type=Path, help="a folder of .ipynb files (searched recursively)")
    grading.add_argument("--report", type=Path, required=True, help="the folder to write the report into")
    grading.add_argument("--timeout", type=int, default=600,
                         help="whole seconds allowed per cell (default 600); a longer cell is interrupted")
    grading.add_argument("--full", action="store_true", help="run the notebooks in full mode, not quick mode")
    table = sub.add_parser("exercise-table", help="print the instructor guide's table of exercises")
    table.add_argument("--write", action="store_true", help=f"write it into {GUIDE}")
    args = parser.parse_args(argv)
    root = Path.cwd()

    if args.command == "student-edition":
        for path in args.paths:
            if not path.exists():
                parser.error(f"{path} does not exist")
        written = write_student_editions(args.paths or book_notebooks(root), args.out)
        if not written:
            print("None of these notebooks has exercises: nothing was written.")
            return 1
        print("Wrote " + ", ".join(str(p) for p in written))
        return 0

    if args.command == "grade":
        try:
            grade(args.submissions, args.report, args.timeout, quick=not args.full)
        except (NotADirectoryError, FileNotFoundError) as error:
            parser.error(str(error))
        print(f"Report: {args.report / 'grades.md'} and {args.report / 'grades.csv'}")
        return 0

    text = exercise_table(root)
    if not args.write:
        print(text)
        return 0
    guide = root / GUIDE
    guide.write_text(guide_with_table(guide.read_text(), text))
    print(f"Wrote the table of {len(EXERCISES)} exercises into {guide}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
