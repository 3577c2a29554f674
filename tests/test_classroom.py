"""Student editions, grading and the instructor guide's table (helpers.classroom), on the real book.

Running every student edition top to bottom would re-run every chapter (the training chapters
train networks), which nbval already does for the book in quick mode. A student edition differs
from the book only in its exercise cells, which come after the "## Exercises" heading, and the
checks build their own inputs (helpers.exercises). So the test runs each student edition's
exercise section after only those cells before it that the section needs, found by following the
names it reads back through the cells that bind or change them (a backward slice). Every check
must then say "not done yet" with its hint, and no cell may raise. In the book every check's
stored verdict is a pass, which nbval confirms by running the book. The student edition of the
small dynamic-graph chapter is also run whole, and must give the same verdicts.
"""

import ast
import contextlib
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import exercises
from helpers.classroom import (TABLE_END, TABLE_START, checked_exercises, exercise_table, expected_exercises,
                               grade_notebook, guide_with_table, has_exercises, is_exercise_cell, is_solution_cell,
                               main, starter_code)
from helpers.exercises import NOT_DONE, Verdict
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


@torch.no_grad()
def scaled(x, factor=2.0):
    """x times factor."""
    return x * factor'''


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


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_a_student_edition_changes_only_the_exercise_cells(path, editions):
    book = nbformat.read(path, as_version=4)
    student = nbformat.read(editions / path.name, as_version=4)
    assert len(book.cells) == len(student.cells)
    for i, (original, edited) in enumerate(zip(book.cells, student.cells)):
        where = f"{path.name}, cell {i}"
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


def _solution_source(nb, function: str) -> str:
    return next(c.source for c in nb.cells if is_solution_cell(c) and f"def {function}(" in c.source)


@pytest.fixture(scope="module")
def graded(tmp_path_factory, editions):
    """Made-up submissions, one per student folder, graded by the command line."""
    book = nbformat.read(ROOT / "book" / "dynamic_graph.ipynb", as_version=4)
    folder = tmp_path_factory.mktemp("submissions")

    def submit(student: str, nb) -> None:
        (folder / student).mkdir()
        nbformat.write(nb, folder / student / "dynamic_graph.ipynb")

    submit("alice", book)  # complete: the reference solutions
    partial = nbformat.read(editions / "dynamic_graph.ipynb", as_version=4)
    cell = next(c for c in partial.cells if is_solution_cell(c) and "def count_nodes(" in c.source)
    cell.source = _solution_source(book, "count_nodes")
    submit("bob", partial)  # count_nodes done, count_leaves left as starter code
    raises = nbformat.from_dict(json.loads(json.dumps(partial)))
    raises.cells.insert(4, nbformat.v4.new_code_cell("torch.ones(2) @ torch.ones(3)"))  # after the imports
    submit("carol", raises)  # an experiment of hers raises; the rest still runs
    forever = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from helpers.exercises import check\nfrom helpers.graphs import backward_graph"),
        nbformat.v4.new_code_cell('def count_nodes(t):\n    """Loops forever."""\n    while True:\n        pass'),
        nbformat.v4.new_code_cell('check("dynamic_graph.count_nodes", count_nodes)'),
        nbformat.v4.new_code_cell(_solution_source(book, "count_leaves")),
        nbformat.v4.new_code_cell('check("dynamic_graph.count_leaves", count_leaves)')])
    submit("dave", forever)  # one answer hangs, the next is right
    (folder / "erin").mkdir()
    text = (ROOT / "book" / "dynamic_graph.ipynb").read_text()
    (folder / "erin" / "dynamic_graph.ipynb").write_text(text[:len(text) // 2])  # an upload cut short

    report = tmp_path_factory.mktemp("report")
    # As an instructor runs it, so that the kernels' own output to stderr is seen too.
    done = subprocess.run([sys.executable, "-m", "helpers.classroom", "grade", str(folder), "--report", str(report),
                           "--timeout", str(TIME_LIMIT)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(report / "grades.csv", newline="", encoding="utf-8") as f:
        rows = {row["submission"].split("/")[0]: row for row in csv.DictReader(f)}
    return rows, (report / "grades.md").read_text(), report, done.stderr


def _statuses(row) -> tuple:
    return row["passed"], row["out_of"], row["dynamic_graph.count_nodes"], row["dynamic_graph.count_leaves"]


def test_grading_reports_every_submission_and_goes_on_after_failures(graded):
    rows, *_ = graded
    assert list(rows) == ["alice", "bob", "carol", "dave", "erin"]
    assert (rows["alice"]["outcome"], _statuses(rows["alice"])) == ("ran", ("2", "2", "passed", "passed"))
    assert (rows["bob"]["outcome"], _statuses(rows["bob"])) == ("ran", ("1", "2", "passed", "not done"))


def test_a_notebook_that_raises_is_reported_with_its_cell_and_its_other_checks_still_count(graded):
    rows, *_ = graded
    assert rows["carol"]["outcome"].startswith("raised RuntimeError in cell 5: ")
    assert _statuses(rows["carol"]) == ("1", "2", "passed", "not done")


def test_an_answer_that_loops_forever_is_interrupted_and_the_next_exercise_still_graded(graded):
    rows, markdown, *_ = graded
    assert rows["dave"]["outcome"] == f"timed out after {TIME_LIMIT} s in cell 3, interrupted; the later cells ran"
    assert _statuses(rows["dave"]) == ("1", "2", "timed out", "passed")
    dave = markdown.split("### dave/dynamic_graph.ipynb")[1].split("###")[0]
    assert f"`dynamic_graph.count_nodes`: its check was still running after {TIME_LIMIT} s and was interrupted" in dave


def test_a_cell_that_ignores_the_interrupt_ends_its_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from helpers.exercises import check"),
        nbformat.v4.new_code_cell('check("dynamic_graph.count_nodes", lambda t: 1)\nimport time\nwhile True:\n'
                                  '    try:\n        time.sleep(0.1)\n    except KeyboardInterrupt:\n        pass'),
        nbformat.v4.new_code_cell('check("dynamic_graph.count_leaves", lambda t: 1)')])
    nbformat.write(nb, tmp_path / "dynamic_graph.ipynb")
    submission = grade_notebook(tmp_path / "dynamic_graph.ipynb", timeout=2)
    assert submission.outcome == ("timed out after 2 s in cell 2 and did not stop when interrupted: "
                                  "the later cells did not run")
    # Its check had given its verdict before the cell hung; the next cell never ran.
    assert submission.status("dynamic_graph.count_nodes") == "failed"
    assert submission.status("dynamic_graph.count_leaves") == "not run"


def test_a_file_that_is_not_a_notebook_is_reported_as_such(graded):
    rows, *_ = graded
    assert rows["erin"]["outcome"].startswith("not a valid notebook (NotJSONError")
    assert _statuses(rows["erin"]) == ("0", "2", "not run", "not run")  # its chapter, from its name


def test_a_file_that_cannot_be_read_is_matched_to_the_chapter_of_exactly_its_name():
    chapters = {name.split(".")[0] for name in expected_exercises([], "fast_training.ipynb")}
    assert chapters == {"fast_training"}  # not training, whose name it contains
    assert {name.split(".")[0] for name in expected_exercises([], "training.ipynb")} == {"training"}
    assert expected_exercises([], "my_training_notes.ipynb") == []


def test_grading_prints_nothing_on_stderr(graded):
    *_, stderr = graded
    assert stderr == ""  # no warnings from the kernels or from nbclient


def test_the_readable_report_has_a_row_per_student_and_says_what_did_not_pass(graded):
    rows, markdown, report, _ = graded
    assert "| alice/dynamic_graph.ipynb | ran | 2 of 2 | ✅ | ✅ |" in markdown
    assert "| bob/dynamic_graph.ipynb | ran | 1 of 2 | ✅ | ⏳ |" in markdown
    assert "### alice" not in markdown
    bob = markdown.split("### bob/dynamic_graph.ipynb")[1].split("###")[0]
    assert "`dynamic_graph.count_leaves`: not done yet. Hint: the leaves are the AccumulateGrad" in bob
    assert sorted(p.parent.name for p in (report / "executed").rglob("*.ipynb")) == ["alice", "bob", "carol", "dave"]


def test_grading_an_empty_or_missing_folder_says_what_is_wrong(tmp_path):
    code, _, err = _classroom("grade", str(tmp_path), "--report", str(tmp_path / "report"))
    assert code == 2 and "there are no .ipynb files under" in err
    code, _, err = _classroom("grade", str(tmp_path / "nope"), "--report", str(tmp_path / "report"))
    assert code == 2 and "is not a folder" in err


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


def test_the_guides_example_exercise_runs_and_gives_the_verdicts_it_shows(monkeypatch, capsys):
    section = _guide_section("Writing an exercise of your own")
    solution, check_cell, plain, explained = re.findall(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"```text\n(❌ .*?)\n```", section, re.S).group(1)
    monkeypatch.setattr(exercises, "EXERCISES", dict(exercises.EXERCISES))  # registered for this test only
    namespace = {"check": exercises.check}
    for code in (plain, explained, solution):
        exec(code, namespace)
    exec(check_cell, namespace)
    assert capsys.readouterr().out == "✅ losses.mean_absolute_error: passed on all 2 inputs\n"

    def the_sum(prediction, target):
        return (prediction - target).abs().sum()

    verdict = exercises.judge_answer("losses.mean_absolute_error_explained", the_sum)
    assert str(verdict) == " ".join(shown.split("\n"))  # the guide wraps the line
    plain_verdict = exercises.judge_answer("losses.mean_absolute_error", the_sum)
    assert plain_verdict.status == exercises.FAILED and "That is the sum" not in plain_verdict.message
    as_float = exercises.judge_answer("losses.mean_absolute_error_explained",
                                      lambda p, t: float((p - t).abs().sum()))
    assert as_float.message.endswith("expected a tensor, got float 1.0")  # no mistake matched, none raised
    exec(starter_code(solution), namespace)  # what the student edition gives the learner
    assert exercises.judge_answer("losses.mean_absolute_error", namespace["mean_absolute_error"]).status == NOT_DONE
