"""The committed notebooks are executed, fresh and clean; nbval (run over book/) does the rest."""

import ast
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml

from helpers.notebooks import QUICK_RUN, code_hash, problems

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").rglob("*.ipynb"))


def toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]}
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            files.add(chapter["file"])
            files.update(section["file"] for section in chapter.get("sections", []))
    return files


def test_there_are_notebooks_and_every_one_is_in_the_book():
    assert NOTEBOOKS, "no notebooks found under book/"
    listed = toc_files()
    for path in NOTEBOOKS:
        assert str(path.relative_to(ROOT).with_suffix("")) in listed, f"{path} is not in _toc.yml"


def numbered_chapters() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ROOT / f"{chapter['file']}.ipynb" for part in toc["parts"] if part.get("numbered")
            for chapter in part["chapters"]]


def markdown_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


@pytest.mark.parametrize("path", numbered_chapters(), ids=lambda p: p.name)
def test_a_chapter_opens_with_its_goals_and_closes_with_a_summary_and_exercises(path):
    # The preface ("How to read it") promises every chapter this shape: what you will be able
    # to do, what it assumes and how long it takes; at the end, a summary, then the exercises.
    markdown = markdown_cells(path)
    assert markdown and markdown[0].startswith("# "), f"{path.name} does not open with its title"
    opening = " ".join(markdown[0].split())
    for part in ("By the end you will be able to: - ", "**Assumes:**", "**Time:**"):
        assert part in opening, f"{path.name}: its opening cell lacks {part.strip()!r}"
    headings = [line.strip() for source in markdown for line in source.splitlines()
                if line.startswith("## ")]
    assert headings[-2:] == ["## Summary", "## Exercises"], \
        f"{path.name}: its last sections are {headings[-2:]}, not Summary then Exercises"


def test_every_helpers_module_has_its_test_file_and_names_its_chapter_by_its_title():
    titles = {str(path.relative_to(ROOT)): markdown_cells(path)[0].splitlines()[0][2:]
              for path in numbered_chapters()}
    named = set()
    for module in sorted((ROOT / "helpers").glob("*.py")):
        if module.name == "__init__.py":
            continue
        assert (ROOT / "tests" / f"test_{module.name}").exists(), f"{module.name} has no test file"
        doc = " ".join(ast.get_docstring(ast.parse(module.read_text())).split())
        found = re.search(r'Introduced in the chapter "([^"]+)" \((book/\S+\.ipynb)\)', doc)
        if found:
            title, chapter = found.groups()
            assert titles.get(chapter) == title, \
                f"{module.name} names the chapter {title!r} ({chapter}), which is not its title"
            named.add(chapter)
    # The chapters that have no module of their own build on earlier ones.
    assert named >= {"book/autograd.ipynb", "book/losses.ipynb", "book/optimizers.ipynb",
                     "book/data.ipynb", "book/training.ipynb", "book/evaluation.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_fresh_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    assert problems(nb) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stamp_says_where_it_ran(path):
    stamp = nbformat.read(path, as_version=4).metadata["course"]
    assert set(stamp) >= {"code_sha256", "torch", "device", "data_source", "quick_mode", "date"}


def _edit_first_code_cell(nb):
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.source += "\nprint('an edit made after the notebook was executed')"


def test_editing_a_code_cell_without_executing_again_is_caught(tmp_path):
    nb = nbformat.read(ROOT / "book" / "dynamic_graph.ipynb", as_version=4)
    assert problems(nb) == []
    _edit_first_code_cell(nb)
    assert code_hash(nb) != nb.metadata["course"]["code_sha256"]
    assert problems(nb) == ["its code changed after its outputs were produced: execute it again"]
    path = tmp_path / "edited.ipynb"
    nbformat.write(nb, path)
    check = subprocess.run([sys.executable, "-m", "helpers.notebooks", "check", str(path)],
                           capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 1
    assert "its code changed after its outputs were produced" in check.stdout


def _tiny_notebook(outputs_text: str | None):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(6 * 7)")
    if outputs_text is not None:
        cell.execution_count = 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=outputs_text)]
    nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval", "--nbval-current-env",
         "-p", "no:cacheprovider", "--rootdir", str(path.parent), "-c", "/dev/null", str(path)],
        capture_output=True, text=True, cwd=path.parent)


def test_nbval_is_strict_a_stale_output_fails(tmp_path):
    good, stale = tmp_path / "good.ipynb", tmp_path / "stale.ipynb"
    nbformat.write(_tiny_notebook("42\n"), good)
    nbformat.write(_tiny_notebook("41\n"), stale)
    assert _nbval(good).returncode == 0
    result = _nbval(stale)
    assert result.returncode == 1
    assert "1 failed" in result.stdout


def test_the_projects_own_nbval_settings_are_strict(tmp_path):
    # The settings the suite runs with (pyproject.toml's addopts, tests/sanitize.cfg), not nbval's
    # defaults: "--nbval-lax", or a sanitizing rule that blanks whole outputs, would pass this.
    good, stale = tmp_path / "good.ipynb", tmp_path / "stale.ipynb"
    nbformat.write(_tiny_notebook("42\n"), good)
    nbformat.write(_tiny_notebook("41\n"), stale)
    for path, returncode in ((good, 0), (stale, 1)):
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", str(ROOT / "pyproject.toml"),
                                 "--rootdir", str(ROOT), str(path)], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == returncode, result.stdout[-2000:]


def test_the_sanitize_file_is_found_from_any_folder():
    # nbval opens --nbval-sanitize-with from the folder pytest starts in; conftest.py makes
    # pyproject.toml's relative path absolute, so that `cd book && pytest losses.ipynb` works.
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    config = types.SimpleNamespace(option=types.SimpleNamespace(nbval_sanitize_with="tests/sanitize.cfg"))
    root_conftest.pytest_configure(config)
    assert config.option.nbval_sanitize_with == str(ROOT / "tests" / "sanitize.cfg")
    assert Path(config.option.nbval_sanitize_with).is_file()


def test_processes_the_tests_start_import_this_checkouts_helpers():
    # conftest.py puts the checkout first on PYTHONPATH: a kernel started in book/ must not find
    # another installed copy of the package.
    code = "import helpers, pathlib; print(pathlib.Path(helpers.__file__).resolve().parents[1])"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=ROOT / "book").stdout.strip()
    assert found == str(ROOT)


def test_an_unexecuted_or_erroring_notebook_is_caught():
    unexecuted = _tiny_notebook(None)
    assert problems(unexecuted)[-1] == "code cell 0 was never executed, so nbval would compare nothing there"
    erroring = _tiny_notebook("42\n")
    erroring.cells[0].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])]
    assert "code cell 0 stores an error (ValueError) a reader would see" in problems(erroring)


def test_a_quick_mode_run_is_caught_and_never_replaces_the_full_run(tmp_path):
    nb = nbformat.read(ROOT / "book" / "dynamic_graph.ipynb", as_version=4)
    nb.metadata["course"]["quick_mode"] = True
    assert problems(nb) == [QUICK_RUN]
    path = tmp_path / "full.ipynb"
    nbformat.write(_tiny_notebook(None), path)
    before = path.read_text()
    run = subprocess.run([sys.executable, "-m", "helpers.notebooks", "execute", str(path)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COURSE_QUICK": "1"})
    assert run.returncode == 2 and "COURSE_QUICK is set" in run.stderr and "--out" in run.stderr
    assert path.read_text() == before


def test_a_noisy_run_never_replaces_the_committed_notebook(tmp_path, monkeypatch):
    from helpers.notebooks import execute

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the rejected run is kept
    nb = _tiny_notebook("42\n")
    nb.cells[0].source = "import sys\nprint('careful', file=sys.stderr)"
    path = tmp_path / "noisy.ipynb"
    nbformat.write(nb, path)
    before = path.read_text()
    with pytest.raises(RuntimeError, match="stores text on stderr.*noisy.ipynb is unchanged"):
        execute(path)
    assert path.read_text() == before


def test_execute_stamps_and_writes_into_another_folder(tmp_path):
    from helpers.notebooks import execute

    path, out = tmp_path / "tiny.ipynb", tmp_path / "out" / "gpu-run"
    nbformat.write(_tiny_notebook(None), path)
    stamp = execute(path, out=out)  # the folder is made: the run is never lost at the end
    executed = nbformat.read(out / "tiny.ipynb", as_version=4)
    assert executed.cells[0].outputs[0].text == "42\n"
    assert executed.metadata["course"] == stamp and stamp["code_sha256"] == code_hash(executed)
    assert problems(nbformat.read(path, as_version=4))  # the original was left unexecuted


def test_executed_kernels_know_they_are_executed(tmp_path, monkeypatch):
    from helpers.notebooks import execute

    monkeypatch.delenv("COURSE_EXECUTING", raising=False)
    nb = _tiny_notebook(None)
    nb.cells[0].source = "import os\nprint(os.environ.get('COURSE_EXECUTING'))"
    path = tmp_path / "env.ipynb"
    nbformat.write(nb, path)
    execute(path)
    assert nbformat.read(path, as_version=4).cells[0].outputs[0].text == "1\n"
    assert "COURSE_EXECUTING" not in os.environ  # and the setting does not leak out


def test_a_failing_notebook_is_kept_for_reading_and_the_next_one_still_runs(tmp_path):
    broken, fine, out = tmp_path / "broken.ipynb", tmp_path / "fine.ipynb", tmp_path / "out"
    nb = _tiny_notebook("42\n")
    nb.cells[0].source = "print('before')\nraise ValueError('no data here')"
    nbformat.write(nb, broken)
    before = broken.read_text()
    nbformat.write(_tiny_notebook(None), fine)
    run = subprocess.run([sys.executable, "-m", "helpers.notebooks", "execute", "--out", str(out),
                          str(broken), str(fine)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert "broken.ipynb: NOT kept" in run.stderr and "ValueError: no data here" in run.stderr
    assert broken.read_text() == before  # the original is untouched
    partial = nbformat.read(out / "rejected" / "broken.ipynb", as_version=4)
    assert partial.cells[0].outputs[0].text == "before\n"  # what ran before the error, to read
    assert [o.output_type for o in partial.cells[0].outputs][-1] == "error"
    assert "fine.ipynb: executed in" in run.stdout
    assert nbformat.read(out / "fine.ipynb", as_version=4).cells[0].outputs[0].text == "42\n"


# A code block of the book's pages shows 80 characters; a longer line gets a scroll bar.
PAGE_WIDTH = 80
CODE_WIDTH = 79  # PEP 8's limit, for the code itself


def _shown_text(output) -> str:
    """The text of an output that the book shows in a code block (wrapped by nobody)."""
    if output["output_type"] == "stream":
        return output["text"]
    data = output.get("data", {})
    if "text/markdown" in data:  # only code fences in it keep their lines
        fences = re.findall(r"```[a-z]*\n(.*?)```", data["text/markdown"], re.S)
        return "\n".join(fences)
    richer = {"text/html", "image/png", "image/svg+xml", "application/vnd.jupyter.widget-view+json"}
    if "text/plain" in data and not richer & data.keys():
        return data["text/plain"]
    return ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_and_printed_text_fit_the_page(path):
    too_long = []
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type != "code":
            continue
        too_long += [f"cell {i}, code: {line}" for line in cell.source.splitlines() if len(line) > CODE_WIDTH]
        if "remove-output" in cell.get("metadata", {}).get("tags", []):
            continue
        for out in cell.get("outputs", []):
            too_long += [f"cell {i}, output: {line}" for line in _shown_text(out).splitlines()
                         if len(line) > PAGE_WIDTH]
    assert not too_long, (f"lines a reader would have to scroll sideways to read (code over {CODE_WIDTH} "
                          f"characters, shown output over {PAGE_WIDTH}):\n" + "\n".join(too_long))


def figure_cells_without_alt_text(nb) -> list[int]:
    """Indices of the code cells with an image output but no alt text for it in their metadata."""
    return [i for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and any("image/png" in out.get("data", {}) for out in cell.outputs)
            and len(cell.metadata.get("mystnb", {}).get("image", {}).get("alt", "").split()) < 8]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_alt_text(path):
    # A reader with a screen reader hears the alt text instead of seeing the figure. Set it in
    # the cell's metadata, {"mystnb": {"image": {"alt": "..."}}}: what the figure shows, in a
    # sentence or two, without numbers that another run would change.
    missing = figure_cells_without_alt_text(nbformat.read(path, as_version=4))
    assert not missing, f"{path.name}: the figures of cells {missing} have no alt text"


def test_a_figure_without_alt_text_is_caught():
    nb = nbformat.v4.new_notebook()
    figure = nbformat.v4.new_code_cell("plt.show()")
    figure.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
    nb.cells = [nbformat.v4.new_code_cell("print(1)"), figure]
    assert figure_cells_without_alt_text(nb) == [1]
    figure.metadata["mystnb"] = {"image": {"alt": "A line chart of the loss per epoch, falling."}}
    assert figure_cells_without_alt_text(nb) == []


def test_the_width_check_sees_long_printed_lines_and_code_fences():
    assert _shown_text(nbformat.v4.new_output("stream", name="stdout", text="x" * 90)) == "x" * 90
    markdown = nbformat.v4.new_output("display_data", data={
        "text/markdown": "a paragraph the browser wraps " * 9 + "\n```python\nlong = 1\n```\n",
        "text/plain": "<IPython.core.display.Markdown object>"})
    assert _shown_text(markdown) == "long = 1\n"
    figure = nbformat.v4.new_output("display_data", data={"image/png": "", "text/plain": "<Figure>" * 20})
    assert _shown_text(figure) == ""


def _code_block_lines(markdown: str) -> list[str]:
    """The lines of the code blocks of a MyST page (fenced blocks, not directives such as
    ```{glossary}, whose text the browser wraps); a fence closes on as many backticks."""
    lines, fence, in_code = [], None, False
    for line in markdown.splitlines():
        opening = re.match(r"^\s*(`{3,})(.*)$", line)
        if fence is None and opening:
            fence, in_code = opening.group(1), not opening.group(2).strip().startswith("{")
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is not None and in_code:
            lines.append(line)
    return lines


@pytest.mark.parametrize("path", sorted((ROOT / "book").glob("*.md")), ids=lambda p: p.name)
def test_the_code_blocks_of_pages_fit_the_page(path):
    too_long = [line for line in _code_block_lines(path.read_text()) if len(line) > PAGE_WIDTH]
    assert not too_long, f"code lines over {PAGE_WIDTH} characters in {path.name}:\n" + "\n".join(too_long)


def test_code_block_lines_skip_directives_and_follow_nested_fences():
    page = ("text\n```{glossary}\n" + "g" * 90 + "\n```\n````text\n```{exercise} x\n"
            "inside\n```\n````\n```bash\ncommand\n```\n")
    assert _code_block_lines(page) == ["```{exercise} x", "inside", "```", "command"]


def _output_text(cell) -> str:
    """Everything a cell's outputs say in text: streams, plain text and Markdown (tables)."""
    parts = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        parts += [out.get("text", ""), data.get("text/plain", ""), data.get("text/markdown", "")]
    return "\n".join(parts)


# Numbers the prose quotes from elsewhere, which a run may print too by coincidence (the GPU run
# may well take 46.2 s for step 1, or reach 94%): not copied from the run.
QUOTED = {
    # CIFAR-10's per-channel means as usually quoted for its training set.
    "data.ipynb": {"0.491", "0.482", "0.447"},
    # The first measurement on an H200 (46.2 s, 2.75 s, 16.8 times), the 94% target,
    # airbench's record (3.29 s on an A100), and compute capability 8.0, where bf16 compiles (a
    # run's table may print a speed-up of 8.0x too).
    "fast_training.ipynb": {"46.2", "2.75", "16.8", "94", "3.29", "8.0"},
}


def _whole_number(number: str) -> re.Pattern:
    """``number`` where it stands whole: 94 is not in 94.1 or 0.94, nor 1.21 in 1.216."""
    return re.compile(r"(?<![\d.])" + re.escape(number) + r"(?!\d|\.\d)")


# What nbval replaces before it compares (tests/sanitize.cfg): a time it blanks out is not compared.
SANITIZED = [re.compile(pattern) for pattern, _ in re.findall(
    r"^regex: (.*)$\n^replace: (.*)$", (ROOT / "tests" / "sanitize.cfg").read_text(), flags=re.M)]


def numbers_copied_from_a_run(nb, quoted=frozenset()) -> list[str]:
    """Decimals, percentages and whole numbers of three digits or more written in the prose
    (outside math and code) that an output of a cell nbval ignores prints, and neither an output
    it compares nor the code does: read off one run, and stale after the next run on other
    hardware, which prints other numbers. ``quoted`` are left out."""
    varying = "\n".join(_output_text(c) for c in nb.cells
                        if c.cell_type == "code" and "nbval-ignore-output" in c.metadata.get("tags", []))
    compared = "\n".join(_output_text(c) for c in nb.cells
                         if c.cell_type == "code" and "nbval-ignore-output" not in c.metadata.get("tags", []))
    for pattern in SANITIZED:
        compared = pattern.sub(" ", compared)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code").replace("_", "")
    fixed = compared + "\n" + code  # a size the code sets or asserts is not a measurement
    copied = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        prose = re.sub(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", " ", cell.source, flags=re.S)
        for number in re.findall(r"(?<![\w.])\d[\d,]*\.\d+|(?<![\w.])\d+(?=%)"
                                 r"|(?<![\w.,])\d{1,3}(?:,\d{3})+(?!\d|[.,]\d)|(?<![\w.,])\d{3,}(?!\d|[.,]\d|%)",
                                 prose):
            # 45,000 in the prose is 45000 in a print or in the code as well
            forms = {number, number.replace(",", "")} if "." not in number else {number}
            printed = [_whole_number(form) for form in forms]
            if (number not in quoted and any(p.search(varying) for p in printed)
                    and not any(p.search(fixed) for p in printed)):
                copied.append(f"cell {i}: {number}")
    return copied


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_prose_copies_no_number_from_a_run(path):
    copied = numbers_copied_from_a_run(nbformat.read(path, as_version=4), QUOTED.get(path.name, set()))
    assert not copied, ("the prose quotes numbers that only outputs tagged nbval-ignore-output print, so "
                        "they change with the hardware and go stale at the next run (on the GPU, for "
                        "one): print them from the code and let the prose point to the printed line:\n"
                        + "\n".join(copied))


@pytest.mark.parametrize("name", sorted(QUOTED))
def test_every_quoted_number_is_still_in_the_prose(name):
    prose = "\n".join(c.source for c in nbformat.read(ROOT / "book" / name, as_version=4).cells
                      if c.cell_type == "markdown")
    missing = {n for n in QUOTED[name] if not _whole_number(n).search(prose)}
    assert not missing, f"QUOTED lists numbers {name} no longer quotes: {sorted(missing)}"


def test_numbers_copied_from_a_run_are_found_and_fixed_ones_are_not():
    def notebook(prose, ignored, compared=""):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(prose),
                    nbformat.v4.new_code_cell("run()", outputs=[
                        nbformat.v4.new_output("stream", name="stdout", text=ignored)]),
                    nbformat.v4.new_code_cell("fixed()", outputs=[
                        nbformat.v4.new_output("stream", name="stdout", text=compared)])]
        nb.cells[1].metadata["tags"] = ["nbval-ignore-output"]
        return nb

    run = "validation accuracy 55.1%, lowest loss 1.216, gap 19%\n"
    assert numbers_copied_from_a_run(notebook("It reached 55.1% (loss 1.216); a gap of 19%.", run)) == [
        "cell 0: 55.1", "cell 0: 1.216", "cell 0: 19"]
    # Printed by a compared cell too, inside math or code, or not printed by the run: not copied.
    assert numbers_copied_from_a_run(notebook("It reached 55.1%.", run, compared="55.1")) == []
    assert numbers_copied_from_a_run(notebook("With $\\alpha = 1.216$ and `55.1`.", run)) == []
    assert numbers_copied_from_a_run(notebook("The mean is about 0.491; 155.1 is not 55.1%.", run)) == [
        "cell 0: 55.1"]
    assert numbers_copied_from_a_run(notebook("Aim for 94%, and 1.21.", "94.1%, 0.94, 1.216")) == []
    assert numbers_copied_from_a_run(notebook("It took 46.2 s.", "46.2 s"), quoted={"46.2"}) == []
    # Whole numbers of three digits or more too, with or without a thousands comma; not when the
    # code sets or asserts them, nor when nbval blanks them out before comparing (a time).
    sizes = "45000 training images in 704 batches, 553 MB"
    assert numbers_copied_from_a_run(notebook("45,000 images, 704 batches, 553 MB; 10 epochs.", sizes)) == [
        "cell 0: 45,000", "cell 0: 704", "cell 0: 553"]
    assert numbers_copied_from_a_run(notebook("It used 45,000. Then 704, then 553.", sizes)) == [
        "cell 0: 45,000", "cell 0: 704", "cell 0: 553"]
    with_code = notebook("45,000 images, 704 batches.", sizes)
    with_code.cells[2].source = "assert len(loader) == pick(704, 32)\nassert n == 45_000"
    assert numbers_copied_from_a_run(with_code) == []
    assert numbers_copied_from_a_run(notebook("It took 123 ms.", "123 ms", compared="123 ms")) == [
        "cell 0: 123"]
    assert set(QUOTED) <= {path.name for path in NOTEBOOKS}


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def _executed(*sources, counts=None):
    nb = nbformat.v4.new_notebook()
    for i, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source)
        cell.execution_count = (counts or list(range(1, len(sources) + 1)))[i]
        nb.cells.append(cell)
    return nb


def test_cells_run_out_of_order_or_twice_are_caught():
    order = "its cells were not executed once each, top to bottom"
    assert order not in problems(_executed("a = 1", "b = 2"))
    assert order in problems(_executed("a = 1", "b = 2", counts=[2, 1]))
    assert order in problems(_executed("a = 1", "b = 2", counts=[1, 1]))


def test_stored_widget_state_is_caught():
    nb = _executed("a = 1")
    assert not any("widget" in p for p in problems(nb))
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    assert "it stores widget state, which the book would load scripts for and not show" in problems(nb)


def test_an_expected_error_in_a_tagged_cell_is_fine_and_an_empty_cell_needs_no_run():
    nb = _executed("raise ValueError('shown on purpose')")
    nb.cells[0].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])]
    nb.cells[0].metadata["tags"] = ["raises-exception"]
    nb.cells.append(nbformat.v4.new_code_cell("  \n"))  # empty, never executed
    assert not any("code cell" in p for p in problems(nb))


def test_execute_runs_the_notebook_from_its_own_folder(tmp_path):
    from helpers.notebooks import execute

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import os\nprint(os.getcwd())"))
    folder = tmp_path / "chapter"
    folder.mkdir()
    path = folder / "cwd.ipynb"
    nbformat.write(nb, path)
    execute(path)
    assert nbformat.read(path, as_version=4).cells[0].outputs[0].text.strip() == str(folder.resolve())


def test_a_failed_run_is_kept_without_the_facts_cell_and_the_executing_flag_is_restored(tmp_path, monkeypatch):
    from helpers.notebooks import execute

    monkeypatch.setenv("COURSE_EXECUTING", "set by the caller")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('no data here')"))
    path, out = tmp_path / "broken.ipynb", tmp_path / "out"
    nbformat.write(nb, path)
    with pytest.raises(RuntimeError, match="broken.ipynb failed to run"):
        execute(path, out=out)
    assert os.environ["COURSE_EXECUTING"] == "set by the caller"
    rejected = nbformat.read(out / "rejected" / "broken.ipynb", as_version=4)
    assert [c.source for c in rejected.cells] == ["raise ValueError('no data here')"]


def test_execute_keeps_only_the_metadata_a_reader_needs(tmp_path):
    from helpers.notebooks import execute

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("print(6 * 7)"))
    nb.metadata["kernelspec"] = {"name": "some-authoring-kernel", "display_name": "X", "language": "python"}
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    path = tmp_path / "meta.ipynb"
    nbformat.write(nb, path)
    execute(path)
    executed = nbformat.read(path, as_version=4)
    assert executed.metadata["kernelspec"] == {"name": "python3", "display_name": "Python 3", "language": "python"}
    assert "jupytext" not in executed.metadata and "widgets" not in executed.metadata
    assert [c.source for c in executed.cells] == ["print(6 * 7)"]  # the facts cell was removed
    assert executed.metadata["course"]["code_sha256"] == code_hash(executed)


def test_a_missing_notebook_is_refused_before_any_runs_and_out_is_created(tmp_path, capsys):
    from helpers.notebooks import main

    good, out = tmp_path / "good.ipynb", tmp_path / "out"
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("print(6 * 7)"))
    nbformat.write(nb, good)
    with pytest.raises(SystemExit) as stopped:
        main(["execute", "--out", str(out), str(good), str(tmp_path / "missing.ipynb")])
    assert stopped.value.code == 2 and "missing.ipynb does not exist" in capsys.readouterr().err
    assert not (out / "good.ipynb").exists()
    assert main(["execute", "--out", str(out), str(good)]) == 0  # the folder --out names is made
    assert nbformat.read(out / "good.ipynb", as_version=4).cells[0].outputs[0].text == "42\n"
