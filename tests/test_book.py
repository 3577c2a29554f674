"""The book builds with warnings as errors, and its pages carry what readers need."""

import collections
import html
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jupyter_book), "build", str(ROOT), "-W", "-n", "--keep-going",
                             "--path-output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "warning" not in result.stderr.lower(), result.stderr
    return out / "_build" / "html"


def test_every_chapter_page_is_built(built):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for page in pages:
        assert (built / f"{page}.html").exists(), page


def test_notebook_pages_have_a_colab_launch_button_from_the_one_repository_url(built):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    repo = url.removeprefix("https://github.com/")
    html = (built / "book" / "dynamic_graph.html").read_text()
    assert f"https://colab.research.google.com/github/{repo}/blob/main/book/dynamic_graph.ipynb" in html


def test_exercises_and_solution_dropdowns_render(built):
    html = (built / "book" / "dynamic_graph.html").read_text()
    assert html.count('class="exercise admonition"') == 2
    assert html.count('class="solution dropdown admonition"') == 2
    assert html.count('tag_solution') == 2  # each solution is a real code cell inside its dropdown


def test_math_is_left_for_mathjax(built):
    html = (built / "book" / "dynamic_graph.html").read_text()
    assert "mathjax" in html.lower()
    assert r"\partial L" in html


def test_every_figure_has_alt_text_that_describes_it(built):
    # Without alt text, myst-nb writes the image's file path as its alt, which is all a screen
    # reader would say. The alt comes from the cell's metadata (see tests/test_notebooks.py).
    figures = 0
    for page in sorted((built / "book").glob("*.html")):
        for tag in re.findall(r'<img [^>]*src="[^"]*_images/[^>]*>', page.read_text()):  # the outputs
            alt = re.search(r'alt="([^"]*)"', tag)
            assert alt and len(alt.group(1).split()) >= 8 and "_images/" not in alt.group(1), (page.name, tag)
            figures += 1
    assert figures >= 20


def test_no_page_holds_an_id_twice(built):
    # sphinx-exercise gives every exercise the same id; book/_ext/unique_exercise_ids.py numbers them.
    for page in sorted(built.rglob("*.html")):
        ids = collections.Counter(re.findall(r'\sid="([^"]+)"', page.read_text()))
        repeated = [i for i, n in ids.items() if n > 1]
        assert not repeated, (page.name, repeated)
    exercises = (built / "book" / "evaluation.html").read_text()
    assert 'id="exercise-content-3"' in exercises and 'id="solution-content-3"' in exercises


def test_the_helpers_reference_documents_every_module():
    documented = re.findall(r"\.\. automodule:: helpers\.(\w+)", (ROOT / "book" / "helpers_reference.md").read_text())
    modules = sorted(p.stem for p in (ROOT / "helpers").glob("*.py") if p.stem != "__init__")
    assert sorted(documented) == modules


def test_the_code_examples_of_the_helpers_reference_fit_the_page(built):
    # The docstrings' examples are code blocks of the reference page: at most 79 characters a line,
    # as in the chapters (a docstring's backslash at a line's end joins it to the next).
    page = (built / "book" / "helpers_reference.html").read_text()
    blocks = [re.sub(r"<[^>]+>", "", block) for block in re.findall(r"<pre>(.*?)</pre>", page, re.S)]
    assert len(blocks) >= 10
    long = [line for block in blocks for line in html.unescape(block).splitlines() if len(line) > 79]
    assert not long, long
