"""Student editions, grading and the instructor guide's table (helpers.classroom), on the real book.

Running every student edition top to bottom would re-run every chapter (the training chapters
train networks), which nbval already does for the book in quick mode. A student edition differs
from the book only in its exercise cells and the text inside its solutions, which come after the
"## Exercises" heading, and the checks build their own inputs (helpers.exercises). So the test
runs each student edition's exercise section after only those cells before it that the section
needs, found by following the names it reads back through the cells that bind or change them (a
backward slice). Every check
must then say "not done yet" with its hint, and no cell may raise. In the book every check's
stored verdict is a pass, which nbval confirms by running the book. The student edition of the
small dynamic-graph chapter is also run whole, and must give the same verdicts. Grading is tested
on made-up submissions of that chapter.
"""

import ast
import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import exercises
from helpers import classroom
from helpers.classroom import (DEFAULT_TIMEOUT, INTERRUPT_GRACE, NO_EXERCISE, TABLE_END, TABLE_START,
                               Submission, checked_exercises, exercise_table, expected_exercises, grade,
                               grade_notebook,
                               guide_with_table, has_exercises, is_exercise_cell, is_solution_cell, main,
                               starter_code, student_edition, without_solution_text)
from helpers.exercises import FAILED, NOT_DONE, Verdict
from helpers.notebooks import book_notebooks

ROOT = Path(__file__).resolve().parents[1]
WITH_EXERCISES = [p for p in book_notebooks(ROOT) if has_exercises(nbformat.read(p, as_version=4))]
EXERCISES_HEADING = re.compile(r"^##\s+Exercises\s*$", re.M)


def _classroom(*args: str) -> tuple[int, str, str]:
    """``python -m helpers.classroom ARGS`` from the repository's root: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's way of refusing arguments
            code = exit.code
    return code, out.getvalue(), err.getvalue()


def _run(nb, workdir: Path):
    """Execute ``nb`` in a fresh kernel (quick mode, set by conftest), every cell even after errors."""
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _errors(nb) -> list[str]:
    return [f"{out.ename}: {out.evalue} in the cell\n{cell.source}" for cell in nb.cells
            if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]


def _not_done(name: str) -> str:
    return f"{Verdict(name, NOT_DONE, f'not done yet. Hint: {exercises.EXERCISES[name].hint}')}\n"


# --- Starter code ----------------------------------------------------------------------------

SOLUTION = '''\
import torch


# a helper the learner writes too
def count_nodes(t: torch.Tensor,
                seen: set | None = None) -> int:
    """Number of distinct nodes.

    Counted once each.
    """
    if t.grad_fn is None:  # a leaf
        return 0

    def inner(node):
        return 1
    return inner(t.grad_fn)
    # the answer's last step, kept under the last statement

# a comment of the cell's own
@torch.no_grad()
def scaled(x, factor=2.0):
    """x times factor."""
    return x * factor
        # multiply, then return'''


def test_starter_code_keeps_signatures_docstrings_imports_and_comments():
    starter = starter_code(SOLUTION)
    assert starter == '''\
import torch


# a helper the learner writes too
def count_nodes(t: torch.Tensor,
                seen: set | None = None) -> int:
    """Number of distinct nodes.

    Counted once each.
    """
    raise NotImplementedError("count_nodes: replace this line with your code")

# a comment of the cell's own
@torch.no_grad()
def scaled(x, factor=2.0):
    """x times factor."""
    raise NotImplementedError("scaled: replace this line with your code")'''
    namespace = {}
    exec(starter, namespace)
    with pytest.raises(NotImplementedError, match="scaled: replace this line"):
        namespace["scaled"](1.0)


@pytest.mark.parametrize("source, message", [
    ('LIMIT = 3\n\ndef f(x):\n    """doc"""\n    return x', "line 1 is not a function definition (Assign), but a solution cell may hold only function"),
    ('def f(x):\n    """doc"""\n    return x\n\nprint(f(2))', "line 5 is not a function definition (Expr)"),
    ("def f(x):\n    return x", "give `f` a docstring"),
    ('def f(x): "doc"', "put the body of `f` on the lines after its `def`"),
])
def test_starter_code_refuses_a_cell_it_cannot_turn_into_a_task(source, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        starter_code(source, "book/x.ipynb, cell 7")


# --- Student editions of the book ------------------------------------------------------------

@pytest.fixture(scope="module")
def editions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    code, _, err = _classroom("student-edition", str(out))
    assert code == 0, err
    return out


def test_the_command_writes_a_student_edition_of_every_notebook_with_exercises(editions):
    assert WITH_EXERCISES, "no notebook in book/ has exercises"
    assert sorted(p.name for p in editions.iterdir()) == sorted(p.name for p in WITH_EXERCISES)


def _functions(source: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


_SOLUTION_DIRECTIVE = re.compile(r"^(`{3,}|~{3,}|:{3,})\{solution-(start|end)\}")


def _solution_text(cells) -> list[tuple[list[bool], bool]]:
    """For each cell: which lines of a Markdown cell are text inside a solution (after a
    solution-start directive's lines, before a solution-end), and whether the cell starts inside one."""
    inside, result = False, []
    for cell in cells:
        flags, starts_inside, fence = [], inside, None
        for line in cell.source.splitlines() if cell.cell_type == "markdown" else []:
            directive = _SOLUTION_DIRECTIVE.match(line)
            if fence is None and directive:
                fence, inside = directive.group(1), directive.group(2) == "start"
            elif fence is not None and line.strip() == fence:  # the directive's closing fence
                fence = None
            else:
                flags.append(fence is None and inside and bool(line.strip()))
                continue
            flags.append(False)
        result.append((flags, starts_inside))
    return result


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_a_student_edition_changes_only_the_exercise_cells_and_the_solutions_text(path, editions):
    book = nbformat.read(path, as_version=4)
    student = nbformat.read(editions / path.name, as_version=4)
    assert len(book.cells) == len(student.cells)
    for i, (original, edited, (inside, _)) in enumerate(zip(book.cells, student.cells, _solution_text(book.cells))):
        where = f"{path.name}, cell {i}"
        if original.cell_type == "markdown" and any(inside):
            kept = [line for line, dropped in zip(original.source.splitlines(), inside) if not dropped]
            assert edited.source == "\n".join(kept).rstrip(), f"{where}: only its solution text should be left out"
            continue
        if not is_exercise_cell(original):
            assert edited == original, f"{where} is not an exercise cell, yet it changed"
            continue
        assert edited.outputs == [] and edited.execution_count is None, f"{where}: outputs not cleared"
        if not is_solution_cell(original):
            assert edited.source == original.source, where
            continue
        solution, starter = _functions(original.source), _functions(edited.source)
        assert solution, f"{where}: a solution cell must define the functions the learner writes"
        assert starter.keys() == solution.keys(), where
        for name, function in starter.items():
            assert ast.dump(function.args) == ast.dump(solution[name].args), f"{where}: {name}'s signature changed"
            assert ast.get_docstring(function) == ast.get_docstring(solution[name]), where
            assert len(function.body) == 2 and isinstance(function.body[1], ast.Raise), where
            assert ast.unparse(function.body[1].exc).startswith("NotImplementedError("), where


def test_no_solution_text_of_the_book_reaches_a_student_edition(editions):
    leaked = []
    for path in WITH_EXERCISES:
        book = nbformat.read(path, as_version=4)
        student = nbformat.read(editions / path.name, as_version=4)
        text = set()
        for i, (cell, (inside, starts_inside)) in enumerate(zip(book.cells, _solution_text(book.cells))):
            if cell.cell_type == "code":  # its code would be shown as it is
                assert not starts_inside or is_solution_cell(cell), (
                    f"{path.name}, cell {i}: a code cell inside a solution must be tagged `solution`")
            text |= {line.strip() for line, is_solution in zip(cell.source.splitlines(), inside) if is_solution}
        for i, cell in enumerate(student.cells):
            if cell.cell_type == "markdown":
                leaked += [f"{path.name}, cell {i}: {line}" for line in cell.source.splitlines()
                           if line.strip() in text]
        assert not any(any(inside) for inside, _ in _solution_text(student.cells)), path.name
    assert leaked == []


def _markdown(source: str):
    return nbformat.v4.new_markdown_cell(source)


def _solution(source: str):
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["solution"]})


def test_a_student_edition_leaves_out_the_text_inside_a_solution_and_keeps_its_directives():
    nb = nbformat.v4.new_notebook(cells=[
        _markdown("```{exercise} Scale\n:label: ex-scale\n\nWrite `scaled(x)`.\n```\n\n"
                  "```{solution-start} ex-scale\n:class: dropdown\n```\n\nMultiply by two: that is all."),
        _markdown("Why two? Because the task says so."),
        _solution('def scaled(x):\n    """x times two."""\n    return 2 * x'),
        _markdown("```{solution-end}\n```\n\nCheck your answer:"),
        _markdown("The text after a solution is kept."),
    ])
    student = student_edition(nb)
    assert [c.source for c in student.cells[:2]] + [c.source for c in student.cells[3:]] == [
        "```{exercise} Scale\n:label: ex-scale\n\nWrite `scaled(x)`.\n```\n\n```{solution-start} ex-scale\n"
        ":class: dropdown\n```",
        "",
        "```{solution-end}\n```\n\nCheck your answer:",
        "The text after a solution is kept.",
    ]
    assert without_solution_text("No solution here.\n\n") == ("No solution here.\n\n", False)
    assert without_solution_text("a\n~~~~{solution-start} x\n~~~~\nb\n~~~~{solution-end}\n~~~~\nc") == (
        "a\n~~~~{solution-start} x\n~~~~\n~~~~{solution-end}\n~~~~\nc", False)
    nb.cells.insert(2, nbformat.v4.new_code_cell("print(2 * 3)  # part of the answer, untagged"))
    with pytest.raises(ValueError, match="cell 2: a code cell inside a solution .* must be tagged `solution`"):
        student_edition(nb)


def _exercise_section_start(nb, name: str) -> int:
    start = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                  and EXERCISES_HEADING.search(c.source)), None)
    assert start is not None, f"{name} has exercises but no '## Exercises' heading before them"
    late = [i for i, c in enumerate(nb.cells[:start]) if is_exercise_cell(c)]
    assert not late, f"{name}: exercise cells {late} come before the '## Exercises' heading"
    return start


class _Names(ast.NodeVisitor):
    """The names a cell binds at its top level, those it reads as it runs, and those its functions
    read when they are called (a function's parameters and locals, and a comprehension's
    variables, are not free names and are left out)."""

    def __init__(self):
        self.bound, self.code = set(), set()  # code: bound by an import, a def or a class
        self.loaded, self.later = set(), set()  # read when the cell runs; when its functions run

    def visit_Name(self, node):
        (self.bound if isinstance(node.ctx, ast.Store) else self.loaded).add(node.id)

    def visit_Import(self, node):
        names = {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        self.bound |= names
        self.code |= names

    visit_ImportFrom = visit_Import

    def _scope(self, parameters, body, deferred: bool):
        inner = _Names()
        if parameters is not None:
            inner.bound |= {a.arg for a in ast.walk(parameters) if isinstance(a, ast.arg)}
        for node in body:
            inner.visit(node)
        (self.later if deferred else self.loaded).update(inner.loaded - inner.bound)
        self.later |= inner.later - inner.bound

    def visit_FunctionDef(self, node):
        self.bound.add(node.name)
        self.code.add(node.name)
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                     *filter(None, [node.args.vararg, node.args.kwarg])]
        evaluated_now = [*node.decorator_list, *node.args.defaults, *filter(None, node.args.kw_defaults),
                         *filter(None, [a.annotation for a in arguments] + [node.returns])]
        for expression in evaluated_now:
            self.visit(expression)
        self._scope(node.args, node.body, deferred=True)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.bound.add(node.name)
        self.code.add(node.name)
        for expression in [*node.decorator_list, *node.bases]:
            self.visit(expression)
        self._scope(None, node.body, deferred=False)

    def visit_Lambda(self, node):
        for default in node.args.defaults:
            self.visit(default)
        self._scope(node.args, [node.body], deferred=True)

    def _comprehension(self, node):
        self._scope(None, list(ast.iter_child_nodes(node)), deferred=False)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension


def _names(cell) -> _Names:
    from IPython.core.inputtransformer2 import TransformerManager

    names = _Names()
    names.visit(ast.parse(TransformerManager().transform_cell(cell.source)))
    return names


def _cells_needed(before: list, section: list) -> list:
    """The cells of ``before`` that the cells of ``section`` need: a backward slice, cell by cell.

    A cell is needed when it binds a name that a needed cell reads, or when it reads such a name
    that holds data (bound by an assignment, not an import or a definition): it may change that
    object. Names that functions read when called may be bound anywhere before the section.
    """
    section_reads, bound, later = set(), set(), set()
    for cell in section:
        names = _names(cell)
        section_reads |= (names.loaded | names.later) - bound
        bound |= names.bound
    infos = [(cell, _names(cell)) for cell in before]
    data = set().union(*(n.bound - n.code for _, n in infos))
    while True:
        needed, chosen = section_reads | later, []
        for cell, names in reversed(infos):
            if names.bound & needed or names.loaded & needed & data:
                chosen.append(cell)
                needed = (needed - (names.bound - names.loaded)) | names.loaded
        called_later = set().union(*(n.later for c, n in infos if any(c is k for k in chosen)))
        if called_later <= later:
            return chosen[::-1]
        later |= called_later


def test_the_slice_keeps_what_the_section_reads_or_changes_and_drops_the_rest():
    cells = [nbformat.v4.new_code_cell(source) for source in [
        "import time\nimport torch",
        "data = torch.zeros(3)",
        "time.sleep(600)  # a long cell that nothing below needs",
        "data.add_(1)  # changes data",
        "SCALE = 2",
        "def helper(x, scale=SCALE):\n    return x * scale + offset",
        "offset = 3",
        "squares = [i * i for i in range(10)]\n%timeit sum(squares)",
    ]]
    section = [nbformat.v4.new_code_cell("result = helper(data)\nprint(result)")]
    assert [c.source[:12] for c in _cells_needed(cells, section)] == [
        "import time\n", "data = torch", "data.add_(1)", "SCALE = 2", "def helper(x", "offset = 3"]


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_in_a_student_edition_every_check_is_not_done_yet_and_in_the_book_it_passes(path, editions, tmp_path):
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:  # nbval re-runs the book and compares with these stored verdicts
        for name in checked_exercises(cell):
            assert f"✅ {name}: passed" in _stdout(cell), (
                f"{path.name}: the book's check of {name} stored {_stdout(cell)!r}, not a pass")
    student = nbformat.read(editions / path.name, as_version=4)
    start = _exercise_section_start(book, path.name)
    section = [c for c in student.cells[start:] if c.cell_type == "code"]
    before = [c for c in student.cells[:start] if c.cell_type == "code"]
    run = nbformat.v4.new_notebook(metadata=book.metadata)
    run.cells = [nbformat.v4.new_code_cell(c.source) for c in _cells_needed(before, section) + section]
    _run(run, tmp_path)
    assert _errors(run) == []
    for cell in run.cells[-len(section):]:
        names = checked_exercises(cell)
        assert _stdout(cell) == "".join(_not_done(n) for n in names), cell.source


def test_the_whole_student_edition_of_the_dynamic_graph_chapter_runs_and_says_not_done(editions, tmp_path):
    nb = _run(nbformat.read(editions / "dynamic_graph.ipynb", as_version=4), tmp_path)
    assert _errors(nb) == []
    verdicts = "".join(_stdout(c) for c in nb.cells if checked_exercises(c))
    assert verdicts == _not_done("dynamic_graph.count_nodes") + _not_done("dynamic_graph.count_leaves")


def test_notebooks_without_exercises_get_no_student_edition(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(nb, tmp_path / "plain.ipynb")
    code, out, _ = _classroom("student-edition", str(tmp_path / "out"), str(tmp_path / "plain.ipynb"))
    assert code == 1 and "has exercises: nothing was written" in out


# --- Grading ---------------------------------------------------------------------------------

TIME_LIMIT = 20  # seconds per cell; the chapter's slowest cell takes a few here
IMPORTS = "from helpers.exercises import check\nfrom helpers.graphs import backward_graph"


def _solution_source(nb, function: str) -> str:
    return next(c.source for c in nb.cells if is_solution_cell(c) and f"def {function}(" in c.source)


def _notebook(*sources: str):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])


@pytest.fixture(scope="module")
def graded(tmp_path_factory, editions):
    """Made-up submissions, one per student folder, graded by the command line."""
    book = nbformat.read(ROOT / "book" / "dynamic_graph.ipynb", as_version=4)
    nodes, leaves = _solution_source(book, "count_nodes"), _solution_source(book, "count_leaves")
    check_nodes, check_leaves = 'check("dynamic_graph.count_nodes", count_nodes)', \
        'check("dynamic_graph.count_leaves", count_leaves)'
    folder = tmp_path_factory.mktemp("submissions")

    def submit(path: str, nb) -> None:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / path)

    submit("alice/dynamic_graph.ipynb", book)  # complete: the reference solutions
    partial = nbformat.read(editions / "dynamic_graph.ipynb", as_version=4)
    cell = next(c for c in partial.cells if is_solution_cell(c) and "def count_nodes(" in c.source)
    cell.source = nodes
    submit("bob/dynamic_graph.ipynb", partial)  # count_nodes done, count_leaves left as starter code
    raises = nbformat.from_dict(json.loads(json.dumps(partial)))
    raises.cells.insert(4, nbformat.v4.new_code_cell("torch.ones(2) @ torch.ones(3)"))  # after the imports
    submit("carol/dynamic_graph.ipynb", raises)  # an experiment of hers raises; the rest still runs
    forever = _notebook(IMPORTS, 'def count_nodes(t):\n    """Loops forever."""\n    while True:\n        pass',
                        check_nodes, leaves, check_leaves)
    submit("dave/dynamic_graph.ipynb", forever)  # one answer hangs, the next is right
    text = (ROOT / "book" / "dynamic_graph.ipynb").read_text()
    (folder / "erin").mkdir()
    (folder / "erin" / "dynamic_graph.ipynb").write_text(text[:len(text) // 2])  # an upload cut short
    # Frank's check cell checks a right function of his own, while count_nodes is starter code.
    submit("frank/dynamic_graph.ipynb", _notebook(
        IMPORTS, starter_code(nodes), nodes.replace("def count_nodes(", "def right_count_nodes("),
        'check("dynamic_graph.count_nodes", right_count_nodes)', leaves, check_leaves))
    # Grace deleted the first check cell, the only one that imports check: hers raise NameError.
    submit("grace/dynamic_graph.ipynb", _notebook("from helpers.graphs import backward_graph", nodes, leaves,
                                                  check_leaves))
    # Heidi's count_nodes has a typo, a SyntaxError: it is never defined.
    submit("heidi/dynamic_graph.ipynb", _notebook(IMPORTS, "def count_nodes(t)\n    return 0", check_nodes,
                                                  leaves, check_leaves))
    # Ivan's browser renamed his notebook; its checks say which chapter it is.
    submit("ivan/dynamic_graph (1).ipynb", _notebook(IMPORTS, nodes, check_nodes, leaves, check_leaves))
    # Judy renamed hers and deleted its checks; Mia sent an empty notebook; Nina an empty one
    # under the chapter's name.
    submit("judy/my_homework.ipynb", _notebook(IMPORTS, nodes, leaves))
    submit("mia/empty.ipynb", nbformat.v4.new_notebook())
    submit("nina/dynamic_graph.ipynb", nbformat.v4.new_notebook())
    # Kim also checks an answer of another chapter, which her notebook's row must not count.
    submit("kim/dynamic_graph.ipynb", _notebook(
        IMPORTS, nodes, check_nodes, leaves, check_leaves,
        'check("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).mean())'))
    (folder / "leo").mkdir()
    (folder / "leo" / "list.ipynb").write_text("[1, 2, 3]")  # JSON, but not a notebook
    # What macOS adds to an archive, and a report of an earlier run inside the folder: not submissions.
    (folder / "__MACOSX" / "alice").mkdir(parents=True)
    (folder / "__MACOSX" / "alice" / "._dynamic_graph.ipynb").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (folder / "alice" / "._dynamic_graph.ipynb").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    report = folder / "report"
    submit("report/executed/alice/dynamic_graph.ipynb", book)
    (report / "executed" / ".written-by-grading").write_text("")  # by an earlier grading

    # As an instructor runs it, so that the kernels' own output to stderr is seen too, and with
    # its output into a pipe buffered, as Python does unless told otherwise.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    run = subprocess.Popen([sys.executable, "-m", "helpers.classroom", "grade", str(folder), "--report",
                            str(report), "--timeout", str(TIME_LIMIT)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line = run.stdout.readline()
    first_line_at = time.monotonic()
    try:
        out, err = run.communicate(timeout=900)
    finally:
        run.kill()
    # Grading the others takes a minute: a progress line printed at once comes long before the end.
    still_running = time.monotonic() - first_line_at > 10
    assert run.returncode == 0, first_line + out + err
    with open(report / "grades.csv", newline="", encoding="utf-8") as f:
        rows = {row["submission"].split("/")[0]: row for row in csv.DictReader(f)}
    return rows, (report / "grades.md").read_text(), report, err, (first_line, still_running)


def _statuses(row) -> tuple:
    return row["passed"], row["out_of"], row["dynamic_graph.count_nodes"], row["dynamic_graph.count_leaves"]


def _details(markdown: str, submission: str) -> str:
    """What grades.md says under ``### submission``."""
    return markdown.split(f"### {submission}\n")[1].split("###")[0]


def test_grading_reports_every_submission_and_goes_on_after_failures(graded):
    rows, *_ = graded
    assert [row["submission"] for row in rows.values()] == [
        "alice/dynamic_graph.ipynb", "bob/dynamic_graph.ipynb", "carol/dynamic_graph.ipynb",
        "dave/dynamic_graph.ipynb", "erin/dynamic_graph.ipynb", "frank/dynamic_graph.ipynb",
        "grace/dynamic_graph.ipynb", "heidi/dynamic_graph.ipynb", "ivan/dynamic_graph (1).ipynb",
        "judy/my_homework.ipynb", "kim/dynamic_graph.ipynb", "leo/list.ipynb", "mia/empty.ipynb",
        "nina/dynamic_graph.ipynb"]  # no __MACOSX, ._ files, or the earlier report's notebooks
    assert (rows["alice"]["outcome"], _statuses(rows["alice"])) == ("ran", ("2", "2", "passed", "passed"))
    assert (rows["bob"]["outcome"], _statuses(rows["bob"])) == ("ran", ("1", "2", "passed", "not done"))


def test_progress_lines_are_printed_as_each_submission_is_graded(graded):
    *_, (first_line, still_running) = graded
    assert first_line == "alice/dynamic_graph.ipynb: 2 of 2 passed; ran\n"
    assert still_running, "the first progress line came only when grading had finished: print it with flush=True"


def test_a_notebook_that_raises_is_reported_with_its_cell_and_its_other_checks_still_count(graded):
    rows, *_ = graded
    assert rows["carol"]["outcome"].startswith("raised RuntimeError in cell 5: ")
    assert _statuses(rows["carol"]) == ("1", "2", "passed", "not done")


def test_an_answer_that_loops_forever_is_interrupted_and_the_next_exercise_still_graded(graded):
    rows, markdown, *_ = graded
    assert rows["dave"]["outcome"] == f"timed out after {TIME_LIMIT} s in cell 3, interrupted; the later cells ran"
    assert _statuses(rows["dave"]) == ("1", "2", "timed out", "passed")
    assert (f"`dynamic_graph.count_nodes`: its check was still running after {TIME_LIMIT} s and was interrupted"
            in _details(markdown, "dave/dynamic_graph.ipynb"))


def test_only_the_graders_own_checks_count_not_the_learners_check_cells(graded):
    rows, markdown, report, *_ = graded
    # Frank's own check cell passed, on a function that is not the one the exercise asks for.
    frank = nbformat.read(report / "executed" / "frank" / "dynamic_graph.ipynb", as_version=4)
    assert "✅ dynamic_graph.count_nodes: passed" in _stdout(frank.cells[3])
    assert (rows["frank"]["outcome"], _statuses(rows["frank"])) == ("ran", ("1", "2", "not done", "passed"))
    # Grace's check cell that imported check is gone: her own checks raise, the grader's pass.
    assert rows["grace"]["outcome"] == "raised NameError in cell 4: name 'check' is not defined"
    assert _statuses(rows["grace"]) == ("2", "2", "passed", "passed")
    # The grader's cells come after the learner's, and say they are the grader's.
    added = [c for c in frank.cells if "grader-check" in c.metadata.get("tags", [])]
    assert frank.cells[-2:] == added
    assert _stdout(added[0]) == _not_done("dynamic_graph.count_nodes")
    assert _stdout(added[1]).startswith("✅ dynamic_graph.count_leaves: passed")


def test_a_function_that_is_not_defined_is_told_why(graded):
    rows, markdown, *_ = graded
    assert rows["heidi"]["outcome"].startswith("raised SyntaxError in cell 2: ")
    assert _statuses(rows["heidi"]) == ("1", "2", "failed", "passed")
    assert ("- `dynamic_graph.count_nodes`: `count_nodes` is not defined: its cell, cell 2, raised SyntaxError: "
            in _details(markdown, "heidi/dynamic_graph.ipynb"))
    assert _statuses(rows["nina"]) == ("0", "2", "failed", "failed")  # an empty notebook under the chapter's name
    assert ("- `dynamic_graph.count_leaves`: `count_leaves` is not defined: no cell defines it, and the exercise "
            "asks for a function of that name" in _details(markdown, "nina/dynamic_graph.ipynb"))


def test_a_renamed_notebook_is_graded_by_its_checks_and_one_without_any_is_reported(graded):
    rows, markdown, *_ = graded
    assert (rows["ivan"]["outcome"], _statuses(rows["ivan"])) == ("ran", ("2", "2", "passed", "passed"))
    for student in ("judy", "mia"):
        assert (rows[student]["outcome"], rows[student]["out_of"]) == (NO_EXERCISE, "0")
        assert f"- outcome: {NO_EXERCISE}" in _details(markdown, rows[student]["submission"])


def test_a_check_of_another_chapter_does_not_count_in_a_chapters_notebook(graded):
    rows, *_ = graded
    assert (rows["kim"]["outcome"], _statuses(rows["kim"])) == ("ran", ("2", "2", "passed", "passed"))
    assert not any(name.startswith("losses.") for name in rows["kim"])  # no column: no notebook of that chapter


HANG_LIMIT = 8  # seconds per cell: importing torch (the first cell) takes a few on a busy machine


def test_a_cell_that_ignores_the_interrupt_ends_its_notebook(tmp_path):
    nb = _notebook("from helpers.exercises import check",
                   'count_nodes = count_leaves = lambda t: 1\ncheck("dynamic_graph.count_nodes", count_nodes)\n'
                   'import time\nwhile True:\n    try:\n        time.sleep(0.1)\n    except KeyboardInterrupt:\n'
                   '        pass')
    nbformat.write(nb, tmp_path / "dynamic_graph.ipynb")
    submission = grade_notebook(tmp_path / "dynamic_graph.ipynb", timeout=HANG_LIMIT)
    assert submission.outcome == (f"timed out after {HANG_LIMIT} s in cell 2 and did not stop when interrupted: "
                                  "the later cells did not run")
    # Its own check gave a verdict before the cell hung, but the grader's checks never ran.
    assert [submission.status(e) for e in submission.expected] == ["not run", "not run"]
    assert submission.verdicts["dynamic_graph.count_nodes"]["message"] == (
        "not run: the run stopped before the grader's check of it (see the outcome)")


def test_a_graders_check_that_ignores_the_interrupt_is_timed_out_and_ends_the_run(tmp_path):
    nb = _notebook("from helpers.exercises import check",
                   'def count_nodes(t):\n    """Ignores interrupts."""\n    import time\n    while True:\n'
                   '        try:\n            time.sleep(0.1)\n        except KeyboardInterrupt:\n            pass')
    nbformat.write(nb, tmp_path / "dynamic_graph.ipynb")
    submission = grade_notebook(tmp_path / "dynamic_graph.ipynb", timeout=HANG_LIMIT)
    assert submission.outcome == (f"timed out after {HANG_LIMIT} s in the grader's check of "
                                  "dynamic_graph.count_nodes and did not stop when interrupted: the later "
                                  "cells did not run")
    assert [submission.status(e) for e in submission.expected] == ["timed out", "not run"]


def test_the_function_an_exercise_asks_for_is_the_one_the_books_check_cell_passes():
    checked = []
    for path in book_notebooks(ROOT):
        for cell in nbformat.read(path, as_version=4).cells:
            for call in ast.walk(ast.parse(cell.source) if checked_exercises(cell) else ast.Module([], [])):
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "check":
                    name, function = call.args
                    assert isinstance(function, ast.Name), (
                        f"{path.name}: the check of {name.value} must pass a function by its name")
                    assert exercises.EXERCISES[name.value].function == function.id, name.value
                    checked.append(name.value)
    assert sorted(checked) == sorted(exercises.EXERCISES)  # the book checks each exercise once


def test_a_file_that_is_not_a_notebook_is_reported_as_such(graded):
    rows, *_ = graded
    assert rows["erin"]["outcome"] == ("a notebook cut short: its text stops in the middle (an upload or a copy "
                                       "that did not finish): ask for the file again")
    assert _statuses(rows["erin"]) == ("0", "2", "not run", "not run")  # its chapter, from its name
    assert rows["leo"]["outcome"] == "not a notebook (its JSON is a list, not a notebook's object)"


def test_a_notebook_belongs_to_the_chapter_of_exactly_its_name_or_else_to_those_it_checks():
    chapters = {name.split(".")[0] for name in expected_exercises([], "fast_training.ipynb")}
    assert chapters == {"fast_training"}  # not training, whose name it contains
    assert {name.split(".")[0] for name in expected_exercises([], "training.ipynb")} == {"training"}
    assert expected_exercises([], "my_training_notes.ipynb") == []
    assert {name.split(".")[0] for name in expected_exercises(["losses.log_softmax"], "training.ipynb")} == {
        "training"}
    assert {name.split(".")[0] for name in expected_exercises(["losses.log_softmax", "nope.x"], "mine.ipynb")} == {
        "losses"}


@pytest.mark.parametrize("content, outcome", [
    (b"PK\x03\x04\x14\x00 an archive", "not a notebook but a zip archive: unzip it, and grade the notebooks inside"),
    ('{"cells": []}'.encode("utf-16"), "a notebook saved as UTF-16 text, not as the UTF-8 that Jupyter writes"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a notebook: not text at all (a binary file renamed .ipynb?)"),
    (json.dumps({"cells": {}, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode(),
     "not a valid notebook (its `cells` are not a list of cells, each with its text)"),
    (json.dumps({"cells": [{"cell_type": "code", "source": 5, "metadata": {}, "outputs": [],
                            "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}).encode(),
     "not a valid notebook (its `cells` are not a list of cells, each with its text)"),
    (None, "could not be read (IsADirectoryError: Is a directory)"),
])
def test_a_file_that_cannot_be_read_as_a_notebook_says_why_and_what_to_do(tmp_path, content, outcome):
    path = tmp_path / "dynamic_graph.ipynb"
    if content is None:
        path.mkdir()  # a folder named like a notebook
    else:
        path.write_bytes(content)
    submission = grade_notebook(path, timeout=20)
    assert submission.outcome.startswith(outcome), submission.outcome
    assert [submission.status(e) for e in submission.expected] == ["not run", "not run"]  # its chapter's


def test_a_notebook_saved_with_a_utf8_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "notes.ipynb"  # no chapter's name and no check: read, then not run
    path.write_bytes(b"\xef\xbb\xbf" + nbformat.writes(nbformat.v4.new_notebook()).encode())
    assert grade_notebook(path, timeout=20).outcome == NO_EXERCISE


def _fake_grading(monkeypatch, outcomes: dict):
    """grade_notebook replaced: each submission gets its outcome from ``outcomes`` by file name
    (an exception is raised), and its chapter's exercises, all passed; no kernel runs."""
    def fake(path, timeout, quick=True, executed=None, name=None):
        outcome = outcomes.get(path.name, "ran")
        if isinstance(outcome, Exception):
            raise outcome
        submission = Submission(name or path.name, outcome, classroom.expected_exercises([], path.name))
        submission.verdicts = {e: {"status": exercises.PASSED, "message": "passed"} for e in submission.expected}
        return submission

    monkeypatch.setattr(classroom, "grade_notebook", fake)


def _empty_submissions(folder: Path, *names: str) -> Path:
    """``folder`` with an empty notebook at each of ``names`` (paths inside it)."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nbformat.v4.new_notebook(), folder / name)
    return folder


def test_one_submission_that_breaks_the_grader_does_not_stop_the_batch(tmp_path, monkeypatch):
    _empty_submissions(tmp_path / "in", "ada/dynamic_graph.ipynb", "bo/dynamic_graph.ipynb")
    (tmp_path / "in" / "bo" / "losses.ipynb").write_text("{}")
    _fake_grading(monkeypatch, {"losses.ipynb": RuntimeError("the kernel's connection file vanished\nmore")})
    submissions = grade(tmp_path / "in", tmp_path / "report", progress=lambda line: None)
    assert [s.name for s in submissions] == ["ada/dynamic_graph.ipynb", "bo/dynamic_graph.ipynb", "bo/losses.ipynb"]
    assert submissions[2].outcome == ("could not be graded (RuntimeError: the kernel's connection file vanished): "
                                      "look at the file, and grade it alone to see more")
    assert submissions[2].expected and submissions[2].passed == 0
    assert (tmp_path / "report" / "grades.csv").read_text().count("\n") == 4


def test_files_that_look_like_submissions_are_graded_or_listed_never_skipped_silently(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    (folder / "n1").mkdir(parents=True)
    (folder / "n2").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), folder / "n1" / "dynamic_graph.IPYNB")  # graded
    (folder / "n2" / "dynamic_graph.ipynb.txt").write_text("{}")
    (folder / "n2" / "losses.zip").write_bytes(b"PK\x03\x04")
    (folder / "n2" / "optimizers.ipynb.zip").write_bytes(b"PK\x03\x04")
    nbformat.write(nbformat.v4.new_notebook(), folder / "n2" / "losses.ipynb")
    _fake_grading(monkeypatch, {})
    said = []
    submissions = grade(folder, tmp_path / "report", progress=said.append)
    assert [s.name for s in submissions] == ["n1/dynamic_graph.IPYNB", "n2/losses.ipynb"]
    skipped = ["n2/dynamic_graph.ipynb.txt: not named .ipynb: rename it to end in .ipynb to grade it",
               "n2/losses.zip: a zip archive: unzip it into the folder to grade the notebooks inside",
               "n2/optimizers.ipynb.zip: a zip archive: unzip it into the folder to grade the notebooks inside"]
    assert said[:3] == [f"not graded: {line}" for line in skipped]
    markdown = (tmp_path / "report" / "grades.md").read_text()
    assert markdown.endswith("## Files not graded\n\n" + "".join(f"- {line}\n" for line in skipped))


def test_a_report_folder_that_holds_submissions_is_refused_and_an_earlier_run_is_replaced(tmp_path, monkeypatch):
    folder = _empty_submissions(tmp_path / "in", "ada/dynamic_graph.ipynb", "bo/dynamic_graph.ipynb")
    _fake_grading(monkeypatch, {})
    with pytest.raises(classroom.CannotGrade, match=r"the report folder .*ada holds submitted notebooks "
                                                    r"\(ada/dynamic_graph.ipynb\): give --report a folder of its own"):
        grade(folder, folder / "ada", progress=lambda line: None)
    # A report inside the submissions folder: its executed notebooks are not submissions, and
    # those of an earlier run are not left beside this run's grades.
    report = folder / "report"
    grade(folder, report, progress=lambda line: None)
    _empty_submissions(report / "executed", "cy/dynamic_graph.ipynb")  # as if cy's submission was withdrawn
    submissions = grade(folder, report, progress=lambda line: None)
    assert [s.name for s in submissions] == ["ada/dynamic_graph.ipynb", "bo/dynamic_graph.ipynb"]
    assert not (report / "executed" / "cy").exists() and (report / "executed" / ".written-by-grading").exists()


def test_a_report_folder_with_an_executed_or_feedback_folder_of_its_own_is_left_alone(tmp_path, monkeypatch):
    folder = _empty_submissions(tmp_path / "in", "ada/dynamic_graph.ipynb")
    _fake_grading(monkeypatch, {})
    (tmp_path / "documents" / "feedback").mkdir(parents=True)
    (tmp_path / "documents" / "feedback" / "from-students.txt").write_text("keep me")
    with pytest.raises(classroom.CannotGrade, match=r"documents/feedback exists, and grading did not write it: "
                                                    r"give --report a folder of its own"):
        grade(folder, tmp_path / "documents", progress=lambda line: None)
    assert (tmp_path / "documents" / "feedback" / "from-students.txt").read_text() == "keep me"


def test_two_notebooks_of_one_chapter_in_one_folder_are_pointed_out(tmp_path, monkeypatch):
    folder = _empty_submissions(tmp_path / "in", "ida/dynamic_graph.ipynb", "ida/dynamic_graph (1).ipynb",
                                "ida/losses.ipynb", "jo/dynamic_graph.ipynb", "flat/ada_dynamic_graph.ipynb",
                                "flat/bo_dynamic_graph.ipynb")
    monkeypatch.setattr(classroom, "expected_exercises", lambda names, filename="": expected_exercises(
        [], re.sub(r"^\w+?_| \(1\)", "", filename)))  # as if the renamed ones checked their chapter's exercises
    _fake_grading(monkeypatch, {"dynamic_graph (1).ipynb": "raised NameError in cell 3: name 'x' is not defined"})
    outcomes = {s.name: s.outcome for s in grade(folder, tmp_path / "report", progress=lambda line: None)}
    assert outcomes == {
        "ida/dynamic_graph (1).ipynb": "raised NameError in cell 3: name 'x' is not defined; the same folder holds "
                                       "another notebook of this chapter (ida/dynamic_graph.ipynb): which one counts?",
        "ida/dynamic_graph.ipynb": "the same folder holds another notebook of this chapter "
                                   "(ida/dynamic_graph (1).ipynb): which one counts?",
        "ida/losses.ipynb": "ran", "jo/dynamic_graph.ipynb": "ran",
        # A flat download: one folder, every learner's notebook of the chapter, each named apart.
        "flat/ada_dynamic_graph.ipynb": "ran", "flat/bo_dynamic_graph.ipynb": "ran"}


def test_each_submission_gets_a_feedback_page_of_its_own(tmp_path, monkeypatch):
    folder = _empty_submissions(tmp_path / "in", "ada/dynamic_graph.ipynb", "bo/dynamic_graph.ipynb")
    _fake_grading(monkeypatch, {})
    grade(folder, tmp_path / "report", progress=lambda line: None)
    page = (tmp_path / "report" / "feedback" / "ada" / "dynamic_graph.ipynb.md").read_text()
    assert page.startswith("# ada/dynamic_graph.ipynb\n\n✅ passed, ❌ failed")
    assert "| ada/dynamic_graph.ipynb | ran | 2 of 2 | ✅ | ✅ |" in page and "bo/" not in page
    assert page.endswith("Everything passed.\n")


def test_a_notebook_of_another_chapter_under_a_chapters_name_is_pointed_out(tmp_path):
    # Her losses notebook uploaded as dynamic_graph.ipynb: graded on dynamic_graph, and told why.
    nb = _notebook("from helpers.exercises import check",
                   'check("losses.mean_squared_error", lambda p, t: ((p - t) ** 2).mean())')
    nbformat.write(nb, tmp_path / "dynamic_graph.ipynb")
    submission = grade_notebook(tmp_path / "dynamic_graph.ipynb", timeout=TIME_LIMIT)
    assert submission.outcome == ("this notebook checks exercises of losses, not of dynamic_graph, whose name it "
                                  "has: was the wrong file submitted?")
    assert submission.passed == 0 and len(submission.expected) == 2


def test_grading_prints_nothing_on_stderr(graded):
    _, _, _, stderr, _ = graded
    assert stderr == ""  # no warnings from the kernels or from nbclient


def test_the_readable_report_has_a_row_per_student_and_says_what_did_not_pass(graded):
    rows, markdown, report, *_ = graded
    assert "| alice/dynamic_graph.ipynb | ran | 2 of 2 | ✅ | ✅ |" in markdown
    assert "| bob/dynamic_graph.ipynb | ran | 1 of 2 | ✅ | ⏳ |" in markdown
    assert "### alice" not in markdown
    bob = _details(markdown, "bob/dynamic_graph.ipynb")
    assert "`dynamic_graph.count_leaves`: not done yet. Hint: the leaves are the AccumulateGrad" in bob
    assert sorted(p.relative_to(report / "executed").as_posix() for p in (report / "executed").rglob("*.ipynb")) == [
        f"{row['submission']}" for row in rows.values()
        if not row["outcome"].startswith(("not a", "a notebook", "no exercise"))]


def test_grading_refuses_what_it_cannot_do_and_says_what_to_do(tmp_path):
    code, _, err = _classroom("grade", str(tmp_path), "--report", str(tmp_path / "report"))
    assert code == 2 and "there are no .ipynb files under" in err
    code, _, err = _classroom("grade", str(tmp_path / "nope"), "--report", str(tmp_path / "report"))
    assert code == 2 and "is not a folder" in err
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "data.ipynb")
    (tmp_path / "report.txt").write_text("keep me")
    code, _, err = _classroom("grade", str(tmp_path), "--report", str(tmp_path / "report.txt"))
    assert code == 2 and "report.txt is a file: give --report a folder" in err
    code, _, err = _classroom("grade", str(tmp_path), "--report", str(tmp_path))
    assert code == 2 and "the report would be written among the submissions" in err
    for timeout in ("0", "-5", "1.5"):
        code, _, err = _classroom("grade", str(tmp_path), "--report", str(tmp_path / "r"), "--timeout", timeout)
        assert code == 2 and "argument --timeout: " in err, timeout
    assert not (tmp_path / "r").exists() and (tmp_path / "report.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="too short"):
        grade_notebook(tmp_path / "data.ipynb", timeout=0)


def test_the_student_edition_command_refuses_to_write_over_its_sources(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    original = (ROOT / "book" / "dynamic_graph.ipynb").read_bytes()
    (book / "dynamic_graph.ipynb").write_bytes(original)
    (book / "notes.md").write_text("# Notes")
    for out in (book, book / "."):
        code, _, err = _classroom("student-edition", str(out), str(book / "dynamic_graph.ipynb"))
        assert code == 2 and "its student edition would be written over it; pick another folder" in err
    assert (book / "dynamic_graph.ipynb").read_bytes() == original
    code, _, err = _classroom("student-edition", str(book / "notes.md"), str(book / "dynamic_graph.ipynb"))
    assert code == 2 and "notes.md is a file: give the folder to write the student editions into" in err
    code, _, err = _classroom("student-edition", str(tmp_path / "out"), str(book / "notes.md"))
    assert code == 2 and "notes.md is not a notebook: give chapters' notebooks (.ipynb)" in err
    assert not (tmp_path / "out").exists()


# --- The instructor guide's table ------------------------------------------------------------

def test_the_instructor_guides_table_lists_every_registered_exercise():
    guide = (ROOT / "book" / "instructor_guide.md").read_text()
    table = exercise_table(ROOT)
    assert guide_with_table(guide, table) == guide, (
        "the table of exercises in book/instructor_guide.md is not the registry's "
        "(helpers/exercises.py): run `python -m helpers.classroom exercise-table --write`")
    for exercise in exercises.EXERCISES.values():
        assert f"| {exercise.title} (`{exercise.name}`) | {exercise.practises.replace('|', chr(92) + '|')} | {exercise.minutes} |" in table


def test_the_table_is_put_between_its_markers_only():
    text = f"intro\n\n{TABLE_START}\nold table\n{TABLE_END}\n\nafter\n"
    assert guide_with_table(text, "new") == f"intro\n\n{TABLE_START}\nnew\n{TABLE_END}\n\nafter\n"
    with pytest.raises(ValueError, match="has no lines"):
        guide_with_table("no markers", "new")


# --- The instructor guide's own example of a new exercise ----------------------------------------

def _guide_section(title: str) -> str:
    guide = (ROOT / "book" / "instructor_guide.md").read_text()
    assert f"## {title}\n" in guide, f"the instructor guide has no section {title!r}"
    return guide.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_guides_grading_command_and_its_worst_case_match_the_code():
    section = _guide_section("Grading")
    assert f"--report report/ --timeout {DEFAULT_TIMEOUT}\n" in section  # the example gives the default
    assert f"({DEFAULT_TIMEOUT} when it is not given)" in section
    assert f"waits up to {INTERRUPT_GRACE} more seconds" in section
    worst_case = f"up to `--timeout` plus\n{INTERRUPT_GRACE} seconds for each of its cells and each of its exercises"
    assert worst_case in section


def test_the_guides_example_exercise_runs_and_gives_the_verdicts_it_shows(monkeypatch, capsys):
    section = _guide_section("Writing an exercise of your own")
    # The judge takes a 0-d tensor and rejects a Python number: the exercise's text says which.
    assert "over every element, as a 0-d tensor." in section
    solution, check_cell, plain, explained = re.findall(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"```text\n(❌ .*?)\n```", section, re.S).group(1)
    # Registered for this test only, and without the example should an instructor have added it.
    name = "losses.mean_absolute_error"
    others = {key: value for key, value in exercises.EXERCISES.items() if key != name}

    def the_sum(prediction, target):
        return (prediction - target).abs().sum()

    monkeypatch.setattr(exercises, "EXERCISES", dict(others))
    namespace = {"check": exercises.check}
    for code in (plain, solution, check_cell):
        exec(code, namespace)
    assert capsys.readouterr().out == f"✅ {name}: passed on all 2 inputs\n"
    plain_verdict = exercises.judge_answer(name, the_sum)
    assert plain_verdict.status == exercises.FAILED and "That is the sum" not in plain_verdict.message
    exec(starter_code(solution), namespace)  # what the student edition gives the learner
    assert exercises.judge_answer(name, namespace["mean_absolute_error"]).status == NOT_DONE

    # The registration with a judge takes the place of the first, under the same name.
    monkeypatch.setattr(exercises, "EXERCISES", dict(others))
    exec(explained, namespace)
    verdict = exercises.judge_answer(name, the_sum)
    assert str(verdict) == " ".join(shown.split("\n"))  # the guide wraps the line
    as_float = exercises.judge_answer(name, lambda p, t: float((p - t).abs().sum()))
    assert as_float.message.endswith("expected a tensor, got float 1.0")  # no mistake matched, none raised
    assert '"losses.mean_absolute_error": torch.nn.functional.l1_loss' in section  # its reference answer

    # The guide's `forbids=` example, added to the exercise, refuses the function it names.
    import torch
    forbids = " ".join(re.search(r"`forbids=(\(.*?\))`", section, re.S).group(1).split())  # rewrapped
    monkeypatch.setattr(exercises.EXERCISES[name], "forbids", eval(forbids, {"torch": torch}))
    calls_it = exercises.judge_answer(name, torch.nn.functional.l1_loss)
    assert calls_it.status == exercises.FAILED and calls_it.message.endswith(
        "the exercise asks for the loss without calling F.l1_loss, but the answer called F.l1_loss"), calls_it.message


def test_an_answer_that_kills_the_kernel_fails_its_own_exercise(tmp_path):
    nbformat.write(_notebook("import os\n\ndef count_nodes(t):\n    os._exit(1)",
                             "def count_leaves(t):\n    return 0"), tmp_path / "dynamic_graph.ipynb")
    submission = grade_notebook(tmp_path / "dynamic_graph.ipynb", timeout=20)
    assert submission.outcome.startswith("the kernel died")
    assert submission.status("dynamic_graph.count_nodes") == FAILED
    assert "the kernel died while its check ran" in submission.verdicts["dynamic_graph.count_nodes"]["message"]
    assert submission.status("dynamic_graph.count_leaves") == "not run"  # its check came after
