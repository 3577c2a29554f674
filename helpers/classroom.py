"""Student editions of the book's notebooks, grading of submitted ones, and the exercise table.

Introduced in the page "Instructor guide" (book/instructor_guide.md); an instructor's tool::

    python -m helpers.classroom student-edition OUTDIR [NOTEBOOK ...]
    python -m helpers.classroom grade SUBMISSIONS --report OUTDIR \\
        [--timeout 120] [--full]
    python -m helpers.classroom exercise-table [--write]

The book is the instructor edition. In a student edition each solution cell (tagged
``solution``; it holds only function definitions with docstrings) becomes starter code: the same
signatures and docstrings, each body replaced by ``raise NotImplementedError``, which the check
reports as "not done yet" with a hint. Markdown text inside a solution (after a
``solution-start`` directive, up to its ``solution-end``) is left out. The outputs of the
exercise cells (solution and check cells) are cleared, and the stamp of the book's run is
replaced; everything else is kept.

Grading runs each submitted notebook in its own kernel, with a time limit per cell (a cell that
runs longer is interrupted and the run goes on), in quick mode unless told otherwise. After the
learner's cells it runs cells of its own, one per exercise of the notebook's chapter, that check
the function the exercise asks for (``Exercise.function``); only their verdicts count, read from
the file that ``COURSE_GRADING_LOG`` names (see helpers.exercises). It writes ``grades.csv`` and
``grades.md`` (a table, then the messages of every check that did not pass), ``feedback/`` (one
page per submission, for its author) and the executed notebooks.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import copy
import csv
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from helpers.exercises import CHECK_ERROR, EXERCISES, FAILED, GRADING_LOG_ENV, NOT_DONE, PASSED
from helpers.notebooks import QUIET_KERNEL, STAMP_KEY
from helpers.runtime import QUICK_ENV

SOLUTION_TAG = "solution"
GRADER_TAG = "grader-check"  # the cells that grading adds after a learner's notebook
NOT_RUN = "not run"  # an exercise whose check by the grader did not run, or gave no verdict
TIMED_OUT = "timed out"  # an exercise whose check was still running at the time limit
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.]+)["']""")
DEFAULT_TIMEOUT = 120  # seconds per cell; the chapters' cells take seconds in quick mode
NO_EXERCISE = ("no exercise found: is this one of the chapters' notebooks? keep its file name "
               "(e.g. data.ipynb)")
_MARKS = {PASSED: "✅", FAILED: "❌", NOT_DONE: "⏳", CHECK_ERROR: "⚠️ check error", NOT_RUN: "not run",
          TIMED_OUT: "⌛ timed out"}
# How long an interrupted cell has to stop (and a finished cell's last outputs to arrive): a
# kernel that does not stop by then is ended, with the rest of its notebook.
INTERRUPT_GRACE = 10
_TIMEOUT_ERROR = "CellTimedOut"  # the error nbclient records for a cell it interrupted
_ZIP_START = b"PK\x03\x04"  # how a zip archive begins
_REPORT_PARTS = ("executed", "feedback")  # the report's folders, replaced on every grading
_WRITTEN_HERE = ".written-by-grading"  # in each: a folder without it is not grading's to replace


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
    written; a body ends at the next line that starts at the left margin (comments indented
    under its last statement are part of it). Anything else in the cell (a constant, a call, a
    class) is refused: a solution cell holds only function definitions, each with a docstring,
    which becomes the task.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    # Where each top-level statement starts, its decorators included.
    starts = [min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) for node in tree.body]
    replacements = []  # (first line, last line, new text), 1-based and inclusive
    for node, next_start in zip(tree.body, starts[1:] + [len(lines) + 1]):
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
        last = node.end_lineno
        # Only blank lines and comments can come between the body's last statement and the next
        # statement: the indented ones belong to the body (they may hold part of the answer).
        for number in range(node.end_lineno + 1, next_start):
            line = lines[number - 1]
            if line.strip() and not line[0].isspace():
                break
            if line.strip():
                last = number
        indent = " " * docstring.col_offset
        stub = (f'{indent}raise NotImplementedError("{node.name}: replace this line with your '
                f'code")\n')
        replacements.append((docstring.end_lineno + 1, last, stub))
    for first, last, stub in reversed(replacements):
        lines[first - 1:last] = [stub]
    return "".join(lines).rstrip("\n")


# The opening line of a MyST directive such as ```{solution-start} ex-label, and its name.
_DIRECTIVE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,}|:{3,})\{(?P<name>[\w-]+)\}")


def without_solution_text(markdown: str, inside: bool = False) -> tuple[str, bool]:
    """``markdown`` without the text inside a solution, and whether the solution goes on after it.

    The text after a ``solution-start`` directive, up to a ``solution-end`` directive, is the
    solution's explanation (``inside``: a solution started in an earlier cell). The directives
    themselves are kept, so that the notebook still renders the dropdown. A cell with no text
    inside a solution is returned as it is.
    """
    lines = markdown.splitlines(keepends=True)
    kept, dropped, i = [], False, 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        if directive and directive["name"] in ("solution-start", "solution-end"):
            fence = directive["fence"]
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].strip().startswith(fence) and not lines[j].strip().strip(fence[0])), i)
            kept += lines[i:end + 1]
            inside, i = directive["name"] == "solution-start", end + 1
            continue
        if inside and lines[i].strip():
            dropped = True
        else:
            kept.append(lines[i])
        i += 1
    return ("".join(kept).rstrip() if dropped else markdown), inside


def student_edition(nb, where: str = "notebook"):
    """A copy of ``nb`` with starter code in its solution cells, no text inside its solutions,
    its exercise cells cleared, and the stamp of the book's run replaced by
    ``{"edition": "student"}``. Raises ``ValueError`` for a code cell inside a solution that is
    not tagged ``solution``."""
    student = copy.deepcopy(nb)
    inside = False  # between a solution-start and its solution-end
    for i, cell in enumerate(student.cells):
        if cell.cell_type == "markdown":
            cell.source, inside = without_solution_text(cell.source, inside)
        elif inside and cell.cell_type == "code" and not is_solution_cell(cell):
            raise ValueError(f"{where}, cell {i}: a code cell inside a solution (between its "
                             "solution-start and solution-end) must be tagged `solution`, or the "
                             "student edition would show it; tag it, or move it after the solution-end")
        if is_solution_cell(cell):
            cell.source = starter_code(cell.source, f"{where}, cell {i}")
        if is_exercise_cell(cell):
            cell.outputs, cell.execution_count = [], None
    # The stamp describes the instructor edition's run, not this one.
    student.metadata[STAMP_KEY] = {"edition": "student"}
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
    """One submitted notebook: how its run went and the verdicts of the grader's own checks."""

    name: str  # its path relative to the submissions folder
    outcome: str = "ran"  # or "timed out ...", "raised ...", "not a valid notebook ...", ...
    expected: list[str] = field(default_factory=list)  # the exercises of its chapter
    verdicts: dict[str, dict] = field(default_factory=dict)  # exercise -> {"status", "message"}

    def status(self, exercise: str) -> str:
        if exercise not in self.expected:
            return ""
        return self.verdicts.get(exercise, {}).get("status", NOT_RUN)

    @property
    def passed(self) -> int:
        return sum(self.status(e) == PASSED for e in self.expected)


class CannotGrade(Exception):
    """Grading cannot start: the message says what is wrong and what to do."""


class _NotANotebook(Exception):
    """A submitted file that cannot be read as a notebook: the message says why."""


def chapter_of(exercise: str) -> str:
    return exercise.split(".")[0]


def expected_exercises(names: list[str], filename: str = "") -> list[str]:
    """Every registered exercise of the chapters a notebook belongs to, in registry order.

    A notebook named exactly like a chapter's (``training.ipynb``) belongs to that chapter, whatever
    it checks; a renamed one (``training (1).ipynb``) to the chapters of the registered exercises
    it checks (``names``). Any other file, one with no check or one that could not be read,
    expects none.
    """
    chapters = {chapter_of(e) for e in EXERCISES}
    stem = Path(filename).stem
    its_chapters = {stem} if stem in chapters else {chapter_of(n) for n in names if n in EXERCISES}
    return [e for e in EXERCISES if chapter_of(e) in its_chapters]


def _another_chapter(checked: list[str], filename: str) -> str:
    """A note when a notebook named like one chapter checks only another chapter's exercises (the
    wrong file submitted under a chapter's name), or ""."""
    stem = Path(filename).stem
    others = sorted({chapter_of(n) for n in checked if n in EXERCISES} - {stem})
    if not others or stem not in {chapter_of(e) for e in EXERCISES} or any(chapter_of(n) == stem for n in checked):
        return ""
    return (f"this notebook checks exercises of {' and '.join(others)}, not of {stem}, whose name it has: "
            f"was the wrong file submitted?")


def grader_cell(exercise: str, function: str):
    """The cell that grading runs after a learner's cells to check ``function`` for ``exercise``."""
    return nbformat.v4.new_code_cell(
        "# Added by the grader: its own check, the one whose verdict counts.\n"
        f'from helpers.exercises import check\n\ncheck("{exercise}", {function})',
        metadata={"tags": [GRADER_TAG]})


def _first_line(text: str, limit: int = 120) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _log_lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def _errors(cell) -> list:
    return [out for out in cell.get("outputs", []) if out.output_type == "error"]


def _read_submission(path: Path):
    """The notebook in ``path``, or ``_NotANotebook`` saying why it is not one and what to do."""
    try:
        raw = path.read_bytes()
    except OSError as error:  # a folder named like a notebook, a file without read permission
        raise _NotANotebook(f"could not be read ({type(error).__name__}: {error.strerror or error})") from None
    if raw.startswith(_ZIP_START):
        raise _NotANotebook("not a notebook but a zip archive: unzip it, and grade the notebooks inside")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _NotANotebook("a notebook saved as UTF-16 text, not as the UTF-8 that Jupyter writes: save "
                            "it again from Jupyter, or ask for the file again")
    try:
        text = raw.decode("utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise _NotANotebook("not a notebook: not text at all (a binary file renamed .ipynb?): ask for "
                            "the notebook again") from None
    except json.JSONDecodeError as error:
        # The text ends where more JSON was due, or inside a string that never closes.
        if not text[error.pos:].strip() or error.msg.startswith("Unterminated string"):
            raise _NotANotebook("a notebook cut short: its text stops in the middle (an upload or a copy "
                                "that did not finish): ask for the file again") from None
        data = None  # not JSON: nbformat's own error below says where
    if data is not None and not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), "a single value")
        raise _NotANotebook(f"not a notebook (its JSON is {kind}, not a notebook's object)")
    if data is not None and "nbformat" not in data:
        raise _NotANotebook("not a notebook (a JSON object without a notebook's `nbformat` field)")
    try:
        nb = nbformat.reads(text, as_version=4)  # the text decoded above: a UTF-8 BOM is no error
    except Exception as error:  # not JSON, or not a valid notebook
        raise _NotANotebook(f"not a valid notebook ({type(error).__name__}: {_first_line(error)})") from error
    cells = nb.get("cells")
    if not isinstance(cells, list) or not all(
            isinstance(cell, dict) and cell.get("cell_type") in ("code", "markdown", "raw")
            and isinstance(cell.get("source"), str) for cell in cells):
        raise _NotANotebook("not a valid notebook (its `cells` are not a list of cells, each with its "
                            "text): ask for the notebook again, as Jupyter saved it")
    return nb


def _not_defined(function: str, cells: list) -> str:
    """Why ``function`` was not defined when the grader checked it, from the learner's ``cells``."""
    defining = [i for i, cell in enumerate(cells) if cell.cell_type == "code"
                and re.search(rf"^\s*(async\s+)?def\s+{function}\b", cell.source, re.M)]
    if not defining:
        return f"`{function}` is not defined: no cell defines it, and the exercise asks for a function of that name"
    i = defining[-1]
    errors = _errors(cells[i])
    if errors:
        return (f"`{function}` is not defined: its cell, cell {i + 1}, raised {errors[0].ename}: "
                f"{_first_line(errors[0].evalue)}")
    return f"`{function}` is not defined: did its cell, cell {i + 1}, run?"


def _grader_verdict(exercise: str, function: str, cell, logged: list[str] | None, interrupted: bool,
                    timeout: float, learner_cells: list, died: bool = False) -> dict:
    """The verdict of the grader's cell ``cell`` on ``exercise``; ``logged``: the verdicts logged
    while it ran (None: it never ran); ``died``: the kernel died while it ran."""
    if died:
        return {"status": FAILED, "message": "the kernel died while its check ran (does the answer exit "
                                             "Python or use too much memory?)"}
    if interrupted:
        return {"status": TIMED_OUT, "message": f"its check was still running after {timeout:g} s and was "
                                                "interrupted (does the answer loop forever?)"}
    if logged is None:
        return {"status": NOT_RUN, "message": "not run: the run stopped before the grader's check of it "
                                              "(see the outcome)"}
    for line in reversed(logged):
        try:
            verdict = json.loads(line)
            if verdict["exercise"] == exercise and verdict["status"] in _MARKS:
                return {"status": verdict["status"], "message": str(verdict["message"])}
        except (ValueError, KeyError, TypeError):
            continue
    errors = _errors(cell)
    if errors and errors[0].ename == "NameError" and f"'{function}'" in errors[0].evalue:
        return {"status": FAILED, "message": _not_defined(function, learner_cells)}
    if errors:
        return {"status": FAILED, "message": f"the grader's check raised {errors[0].ename}: "
                                             f"{_first_line(errors[0].evalue)}"}
    return {"status": NOT_RUN, "message": "the grader's check gave no verdict (did the notebook change "
                                          "helpers.exercises?)"}


def grade_notebook(path: Path, timeout: float, quick: bool = True, executed: Path | None = None,
                   name: str | None = None) -> Submission:
    """Run one submitted notebook in a fresh kernel, then the grader's own checks of its exercises.

    Its exercises are those of its chapter (``expected_exercises``). After the learner's cells,
    one cell per exercise checks the function the exercise asks for (``Exercise.function``);
    only these verdicts count, so a learner's check cell that was edited
    or deleted changes nothing. Every cell runs, even after one raises (the first error of the
    learner's cells is reported). A cell gets ``timeout`` seconds; then it is interrupted (a
    grader's cell interrupted makes its exercise "timed out"), and the run goes on with the next
    cell. With ``executed`` (a folder), the executed notebook, the grader's cells included, is
    written there as ``name`` (by default the file's own name).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    import helpers

    if timeout < 1:
        raise ValueError(f"a limit of {timeout:g} s per cell is too short: give at least 1 s")
    submission = Submission(name or path.name)
    try:
        nb = _read_submission(path)
    except _NotANotebook as error:
        submission.outcome = str(error)
        submission.expected = expected_exercises([], path.name)
        return submission
    checked = [n for c in nb.cells for n in checked_exercises(c)]
    submission.expected = expected_exercises(checked, path.name)
    if not submission.expected:
        submission.outcome = NO_EXERCISE
        return submission
    wrong_file = _another_chapter(checked, path.name)

    learner_cells = list(nb.cells)
    graders = {}  # the index of a grader's cell -> the exercise it checks
    for exercise in submission.expected:
        graders[len(nb.cells)] = exercise
        nb.cells.append(grader_cell(exercise, EXERCISES[exercise].function))

    def where(i: int) -> str:  # a cell, as the outcome names it
        return f"cell {i + 1}" if i < len(learner_cells) else f"the grader's check of {graders[i]}"

    # On Windows a kernel that has not quite exited still holds its folder: a failed clean-up of a
    # temporary folder must not stop the grading.
    with tempfile.TemporaryDirectory(prefix="grading-", ignore_cleanup_errors=True) as workdir:
        log = Path(workdir) / "verdicts.jsonl"
        env = dict(os.environ, **{GRADING_LOG_ENV: str(log)})
        env.pop(QUICK_ENV, None)
        if quick:
            env[QUICK_ENV] = "1"
        # The kernel imports the same helpers as this command, wherever it runs from.
        package_root = str(Path(helpers.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        logged_before = {}  # a grader's cell -> how many verdicts were logged before it ran
        interrupted = set()  # the cells that ran past the limit
        died_in = None  # the cell that was running when the kernel died
        started = {}  # the cell running, and when it started

        def starting(cell, cell_index, **_):
            if cell_index in graders:
                logged_before[cell_index] = len(_log_lines(log))
            started.update(cell=cell_index, at=time.monotonic())

        def finished(cell, cell_index, execute_reply, **_):
            if (execute_reply or {}).get("content", {}).get("ename") == _TIMEOUT_ERROR:
                interrupted.add(cell_index)

        # nbclient logs timeouts and dead kernels, which the outcome reports.
        quiet = logging.getLogger(f"{__name__}.nbclient")
        quiet.setLevel(logging.CRITICAL)
        client = NotebookClient(
            nb, timeout=math.ceil(timeout), kernel_name="python3", allow_errors=True,
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
                outcome.append(f"the outputs of {where(stuck)} did not all arrive within "
                               f"{INTERRUPT_GRACE} s of its end: the later cells did not run")
            else:
                interrupted.add(stuck)
                outcome.append(f"timed out after {timeout:g} s in {where(stuck)} and did not stop when "
                               "interrupted: the later cells did not run")
        except DeadKernelError:
            died_in = started.get("cell")
            outcome.append("the kernel died (did the notebook exit Python or run out of memory?)")
        except Exception as error:
            outcome.append(f"could not be run ({type(error).__name__}: {_first_line(error)})")
        else:
            # The learner's cells; an interrupted grader's cell is its exercise's verdict.
            late = sorted(i for i in interrupted if i < len(learner_cells))
            if late:
                outcome.append(f"timed out after {timeout:g} s in cell{'s' if len(late) > 1 else ''} "
                               f"{' and '.join(str(i + 1) for i in late)}, interrupted; the later cells ran")
            errors = [(i, out) for i, cell in enumerate(learner_cells) if cell.cell_type == "code"
                      and i not in interrupted
                      and "raises-exception" not in cell.get("metadata", {}).get("tags", [])
                      for out in _errors(cell)]
            if errors:
                i, out = errors[0]
                more = f" (and {len(errors) - 1} more cells)" if len(errors) > 1 else ""
                outcome.append(f"raised {out.ename} in cell {i + 1}: {_first_line(out.evalue)}{more}")
        if wrong_file:
            outcome.insert(0, wrong_file)
        submission.outcome = "; ".join(outcome) or "ran"
        # Each grader's cell runs after the one before it: the verdicts logged from its start to
        # the next one's start are its own. The learner's cells' verdicts are ignored.
        logged = _log_lines(log)
        order = sorted(graders)
        for i, after in zip(order, order[1:] + [None]):
            own = logged[logged_before[i]:logged_before.get(after, len(logged))] if i in logged_before else None
            submission.verdicts[graders[i]] = _grader_verdict(
                graders[i], EXERCISES[graders[i]].function, nb.cells[i], own, i in interrupted, timeout, learner_cells,
                died=i == died_in)
    if executed is not None:
        target = executed / submission.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    return submission


def _say(line: str) -> None:
    print(line, flush=True)  # at once, even into a pipe: grading a folder takes minutes


def _is_notebook_name(path: Path) -> bool:
    return path.suffix.lower() == ".ipynb"  # "dynamic_graph.IPYNB" too


def _left_out(path: Path, folder: Path) -> bool:
    """Jupyter's checkpoints, and the files macOS adds to an archive (``__MACOSX/``, ``._*``)."""
    return bool({".ipynb_checkpoints", "__MACOSX"} & set(path.relative_to(folder).parts)) or path.name.startswith("._")


def submissions_in(folder: Path, report: Path) -> list[Path]:
    """The notebooks under ``folder`` to grade: not Jupyter's checkpoints, not the files macOS
    adds to an archive (``__MACOSX/``, ``._*``), and not the executed notebooks of an earlier
    report (``executed/`` in the report folder) when the report folder is inside ``folder``."""
    executed = (report / "executed").resolve()
    return sorted(p for p in folder.rglob("*")
                  if _is_notebook_name(p) and not _left_out(p, folder) and not p.resolve().is_relative_to(executed))


def not_graded(folder: Path, report: Path) -> list[str]:
    """Files under ``folder`` that look like submissions but are not graded: a notebook renamed
    ``.ipynb.txt`` or ``.ipynb.json`` (any name with ``.ipynb`` inside), a zip archive. Each with
    what to do."""
    executed = (report / "executed").resolve()
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or _left_out(path, folder) or path.resolve().is_relative_to(executed):
            continue
        name = path.relative_to(folder).as_posix()
        lower = path.name.lower()
        if lower.endswith(".zip"):
            found.append(f"{name}: a zip archive: unzip it into the folder to grade the notebooks inside")
        elif ".ipynb" in lower and not _is_notebook_name(path):
            found.append(f"{name}: not named .ipynb: rename it to end in .ipynb to grade it")
    return found


def grade(folder: Path, report: Path, timeout: float = DEFAULT_TIMEOUT, quick: bool = True,
          progress: Callable[[str], None] | None = None) -> list[Submission]:
    """Grade every submitted notebook under ``folder`` and write the report into ``report``.

    The ``executed/`` and ``feedback/`` folders of an earlier grading there are replaced.
    ``progress`` receives a line per notebook as it is graded, and one per file not graded (see
    ``not_graded``); by default it is printed. Raises ``CannotGrade``, saying why, when grading
    cannot start (the folders, the time limit, no notebooks to grade)."""
    progress = progress or _say
    if not folder.is_dir():
        raise CannotGrade(f"{folder} is not a folder: give the folder that holds the submitted notebooks")
    if report.exists() and not report.is_dir():
        raise CannotGrade(f"{report} is a file: give --report a folder (it is made if it does not exist)")
    if report.resolve() == folder.resolve() or folder.resolve().is_relative_to(report.resolve() / "executed"):
        raise CannotGrade(f"the report would be written among the submissions ({folder}): give --report "
                          "another folder, such as one next to the submissions folder")
    if timeout < 1:
        raise CannotGrade(f"a limit of {timeout:g} s per cell is too short: give --timeout at least 1")
    paths = submissions_in(folder, report)
    if not paths:
        raise CannotGrade(f"there are no .ipynb files under {folder}")
    inside_report = [p for p in paths if p.resolve().is_relative_to(report.resolve())]
    if inside_report:  # its executed/ would be rewritten, among a student's files
        raise CannotGrade(f"the report folder {report} holds submitted notebooks "
                          f"({inside_report[0].relative_to(folder).as_posix()}): give --report a folder of "
                          f"its own, such as one next to the submissions folder")
    for part in _REPORT_PARTS:
        if (report / part).exists() and not (report / part / _WRITTEN_HERE).exists():
            raise CannotGrade(f"{report / part} exists, and grading did not write it: give --report a folder "
                              f"of its own (a report of an older version of the course: delete it first)")
    report.mkdir(parents=True, exist_ok=True)
    # The executed notebooks and the feedback of an earlier run would stand beside this run's
    # grades as if they were of it: they are written anew (only those that grading wrote).
    for part in _REPORT_PARTS:
        try:
            if (report / part).exists():
                shutil.rmtree(report / part)
            (report / part).mkdir()
        except OSError as error:
            raise CannotGrade(f"could not replace {report / part} of the earlier grading ({error}): delete "
                              f"it, or give --report another folder") from None
        (report / part / _WRITTEN_HERE).write_text("Written by python -m helpers.classroom grade, which "
                                                   "replaces this folder when it grades again.\n",
                                                   encoding="utf-8")
    skipped = not_graded(folder, report)
    for line in skipped:
        progress(f"not graded: {line}")
    submissions = []
    for path in paths:
        name = path.relative_to(folder).as_posix()
        try:
            submission = grade_notebook(path, timeout, quick, report / "executed", name)
        except Exception as error:  # one submission's problem must not stop the batch
            submission = Submission(name, f"could not be graded ({type(error).__name__}: {_first_line(error)}): "
                                          f"look at the file, and grade it alone to see more",
                                    expected_exercises([], path.name))
        progress(f"{name}: {submission.passed} of {len(submission.expected)} passed; {submission.outcome}")
        submissions.append(submission)
    _mark_same_chapter_twice(submissions)
    write_report(submissions, report, skipped)
    return submissions


# What browsers, file managers and Jupyter's "Duplicate" add to a copy's name: " (1)", " copy",
# " - Copy", "-Copy1".
_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|\s*-\s*copy\s*\d*|\s+copy(\s*\d+)?)$", re.I)


def _mark_same_chapter_twice(submissions: list[Submission]) -> None:
    """Say, in the outcome, when one folder holds a chapter's notebook twice, as the chapter's file
    and a copy of it (``dynamic_graph.ipynb`` and ``dynamic_graph (1).ipynb``): which one counts is
    the instructor's call. Differently named notebooks of one chapter (``ada_dynamic_graph.ipynb``,
    ``bo_dynamic_graph.ipynb``, a flat download) are different learners'."""
    chapters = {chapter_of(e) for e in EXERCISES}
    groups: dict[tuple[str, str], list[Submission]] = {}
    for s in submissions:
        path = Path(s.name)
        stem = _COPY_SUFFIX.sub("", path.stem)
        if stem in chapters:
            groups.setdefault((str(path.parent), stem), []).append(s)
    for group in groups.values():
        for s in group if len(group) > 1 else []:
            others = ", ".join(o.name for o in group if o is not s)
            note = f"the same folder holds another notebook of this chapter ({others}): which one counts?"
            s.outcome = note if s.outcome == "ran" else f"{s.outcome}; {note}"


def write_report(submissions: list[Submission], report: Path, not_graded: list[str] = ()) -> None:
    """``grades.csv`` (one row per submission, one column per exercise), ``grades.md`` (the table,
    what did not pass, and the files not graded), and ``feedback/``: one page per submission, for
    its author alone."""
    exercises = [e for e in EXERCISES if any(e in s.expected for s in submissions)]
    with open(report / "grades.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "outcome", "passed", "out_of", *exercises])
        for s in submissions:
            writer.writerow([s.name, s.outcome, s.passed, len(s.expected), *(s.status(e) for e in exercises)])

    lines = ["# Grades", "", f"Submissions: {len(submissions)}. {_LEGEND}", "",
             *_table(submissions, exercises)]
    details = []
    for s in submissions:
        notes = _notes(s)
        if notes:
            details += [f"### {_markdown_text(s.name)}", "", *notes, ""]
    lines += ["", "## What did not pass", "", *(details or ["Everything passed."])]
    if not_graded:
        lines += ["", "## Files not graded", "", *(f"- {_markdown_text(line)}" for line in not_graded)]
    (report / "grades.md").write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    for s in submissions:  # each learner's own page: their row and messages, nobody else's
        page = report / "feedback" / f"{s.name}.md"  # the whole name: a.ipynb and a.IPYNB are two pages
        page.parent.mkdir(parents=True, exist_ok=True)
        own = [e for e in exercises if e in s.expected]
        text = [f"# {_markdown_text(s.name)}", "", _LEGEND, "", *_table([s], own), "", *(_notes(s) or ["Everything passed."])]
        page.write_text("\n".join(text).rstrip() + "\n", encoding="utf-8")


_LEGEND = ("✅ passed, ❌ failed, ⏳ not done (starter code), ⌛ timed out (the check was interrupted), "
           "⚠️ check error (a bug of the check itself, not of the answer), 'not run': no verdict (the "
           "grader's own check, run after the notebook's cells, did not run or gave none). Only the "
           "grader's checks count.")


def _markdown_text(text: str) -> str:
    """``text`` for a cell of a Markdown table, or a line of a list."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(submissions: list[Submission], exercises: list[str]) -> list[str]:
    lines = ["| submission | outcome | passed | " + " | ".join(f"`{e}`" for e in exercises) + " |",
             "|---|---|---|" + "---|" * len(exercises)]
    for s in submissions:
        marks = [_MARKS.get(s.status(e), s.status(e)) for e in exercises]
        lines.append(f"| {_markdown_text(s.name)} | {_markdown_text(s.outcome)} | {s.passed} of {len(s.expected)} | "
                     + " | ".join(marks) + " |")
    return lines


def _notes(s: Submission) -> list[str]:
    """The outcome, when the notebook did not simply run, and the message of every check that did
    not pass."""
    notes = [f"- `{e}`: {_markdown_text(s.verdicts[e]['message'])}" if e in s.verdicts else f"- `{e}`: not run"
             for e in s.expected if s.status(e) != PASSED]
    if s.outcome != "ran":
        notes.insert(0, f"- outcome: {_markdown_text(s.outcome)}")
    return notes


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

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
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

def _seconds_per_cell(text: str) -> int:
    """``--timeout``: a whole number of seconds, at least 1."""
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{seconds} s is too short: give at least 1 second per cell")
    return seconds


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
    grading.add_argument("--timeout", type=_seconds_per_cell, default=DEFAULT_TIMEOUT,
                         help=f"whole seconds allowed per cell (default {DEFAULT_TIMEOUT}); a longer cell "
                              "is interrupted")
    grading.add_argument("--full", action="store_true", help="run the notebooks in full mode, not quick mode")
    table = sub.add_parser("exercise-table", help="print the instructor guide's table of exercises")
    table.add_argument("--write", action="store_true", help=f"write it into {GUIDE}")
    args = parser.parse_args(argv)
    root = Path.cwd()

    if args.command == "student-edition":
        if args.out.exists() and not args.out.is_dir():
            parser.error(f"{args.out} is a file: give the folder to write the student editions into "
                         "(it is made if it does not exist)")
        for path in args.paths:
            if not path.exists():
                parser.error(f"{path} does not exist")
            if path.is_dir() or path.suffix != ".ipynb":
                parser.error(f"{path} is not a notebook: give chapters' notebooks (.ipynb), such as "
                             "book/dynamic_graph.ipynb, or none for every chapter")
        sources = args.paths or book_notebooks(root)
        for path in sources:
            if path.resolve() in (args.out.resolve() / path.name, (args.out / path.name).resolve()):
                parser.error(f"{args.out} holds {path}: its student edition would be written over it; "
                             "pick another folder, such as student/")
        written = write_student_editions(sources, args.out)
        if not written:
            print("None of these notebooks has exercises: nothing was written.")
            return 1
        print("Wrote " + ", ".join(str(p) for p in written))
        return 0

    if args.command == "grade":
        try:
            grade(args.submissions, args.report, args.timeout, quick=not args.full)
        except CannotGrade as error:
            parser.error(str(error))
        print(f"Report: {args.report / 'grades.md'} and {args.report / 'grades.csv'}")
        return 0

    text = exercise_table(root)
    if not args.write:
        print(text)
        return 0
    guide = root / GUIDE
    guide.write_text(guide_with_table(guide.read_text(encoding="utf-8"), text), encoding="utf-8")
    print(f"Wrote the table of {len(EXERCISES)} exercises into {guide}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
