"""Every notebook starts with the Colab cell (helpers.colab), and that cell is all a notebook needs
in an environment that holds only what Colab provides."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import nbformat
import pytest
import yaml

import helpers
from helpers.classroom import checked_exercises
from helpers.colab import INTRO, first_cell_source, first_code_cell, install_target, main, write_first_cell
from helpers.notebooks import book_notebooks

ROOT = Path(__file__).resolve().parents[1]

# What Colab has installed that the course relies on (the torch pair the book is made with), and
# what runs a notebook there. Nothing else: helpers must not need more.
COLAB_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "matplotlib", "ipywidgets", "tqdm", "numpy"]
NOTEBOOK_RUNNER = ["ipykernel", "nbclient"]


@pytest.mark.parametrize("path", book_notebooks(ROOT), ids=lambda p: p.name)
def test_every_notebook_starts_with_the_colab_cell(path):
    cell = first_code_cell(nbformat.read(path, as_version=4))
    assert cell is not None and cell.source == first_cell_source(ROOT), (
        f"the first code cell of {path.relative_to(ROOT)} is not the course's Colab cell. Run "
        "`python -m helpers.colab` to write it, then execute the notebook again with "
        f"`python -m helpers.notebooks execute {path.relative_to(ROOT)}` (a changed code cell "
        "changes the notebook's code hash)")


def test_the_cell_installs_the_configured_repository_at_the_packages_tag_without_dependencies():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert install_target(ROOT) == f"git+{url}@v{helpers.__version__}"
    source = first_cell_source(ROOT)
    assert f'"{install_target(ROOT)}"' in source
    assert "--no-deps" in source  # Colab's own torch and torchvision are never replaced
    assert 'if "google.colab" in sys.modules:\n    %pip install' in source


def test_the_tag_names_the_version_pip_installs():
    # The package's version is read from helpers.__version__, the one place the tag comes from.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "helpers.__version__"}
    from importlib.metadata import version

    assert version("train-eval-course-helpers") == helpers.__version__


def _notebook(*sources: str):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A chapter")]
                                    + [nbformat.v4.new_code_cell(s) for s in sources])


def test_the_command_rewrites_an_old_cell_and_adds_a_missing_one(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "_config.yml", tmp_path)
    (tmp_path / "book").mkdir()
    old = first_cell_source(ROOT).replace(f"@v{helpers.__version__}", "@v0.0.1")
    nbformat.write(_notebook(old, "x = 1"), tmp_path / "book" / "old.ipynb")
    nbformat.write(_notebook("import torch"), tmp_path / "book" / "missing.ipynb")
    nbformat.write(_notebook(first_cell_source(ROOT), "x = 1"), tmp_path / "book" / "good.ipynb")
    monkeypatch.chdir(tmp_path)

    assert main(["--check"]) == 1
    assert "book/missing.ipynb book/old.ipynb" in capsys.readouterr().out
    assert main([]) == 0
    assert "execute them again: python -m helpers.notebooks execute book/missing.ipynb book/old.ipynb" in capsys.readouterr().out
    old_nb = nbformat.read(tmp_path / "book" / "old.ipynb", as_version=4)
    assert [c.source for c in old_nb.cells[1:]] == [first_cell_source(ROOT), "x = 1"]
    missing = nbformat.read(tmp_path / "book" / "missing.ipynb", as_version=4)
    assert [c.cell_type for c in missing.cells] == ["markdown", "markdown", "code", "code"]
    assert missing.cells[2].source == first_cell_source(ROOT)
    assert main(["--check"]) == 0
    assert not write_first_cell(missing, first_cell_source(ROOT))


def test_a_missing_repository_url_is_a_clear_error(tmp_path):
    (tmp_path / "_config.yml").write_text("title: x\n")
    with pytest.raises(ValueError, match="has no repository.url"):
        first_cell_source(tmp_path)


# --- A Colab-like environment ----------------------------------------------------------------

def _checkout_files() -> list[str]:
    """The files a clone of the repository would have (the working tree's, committed or not)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, cwd=ROOT)
    if listed.returncode == 0:
        return [f for f in listed.stdout.splitlines() if (ROOT / f).is_file()]
    return [str(p.relative_to(ROOT)) for p in [ROOT / "pyproject.toml", ROOT / "README.md",
                                               *(ROOT / "helpers").glob("*.py")]]


@pytest.fixture(scope="session")
def colab(tmp_path_factory):
    """A new virtual environment with Colab's packages, where the dynamic-graph chapter has run
    with its first cell installing helpers from a copy of the checkout (in place of the git URL).

    Gives the executed notebook, the environment's Python, its environment variables and the
    folder the notebook ran in.
    """
    base = tmp_path_factory.mktemp("colab")
    venv, checkout, workdir = base / "venv", base / "checkout", base / "work"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *COLAB_PACKAGES, *NOTEBOOK_RUNNER],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    # Colab's kernels import google.colab at start-up; a stand-in does the same here.
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "google" / "colab").mkdir(parents=True)
    (site / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s module (tests/test_colab.py)."""\n')
    (site / "colab_stand_in.pth").write_text("import google.colab\n")

    for name in _checkout_files():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    nb = nbformat.read(ROOT / "book" / "dynamic_graph.ipynb", as_version=4)
    cell = first_code_cell(nb)
    assert f'"{install_target(ROOT)}"' in cell.source
    cell.source = cell.source.replace(install_target(ROOT), str(checkout))
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, sys, torch, helpers\n"
        "print(json.dumps({'helpers': helpers.__file__, 'python': sys.executable, "
        "'colab': 'google.colab' in sys.modules, 'torch': torch.__version__}))"))
    workdir.mkdir()  # the notebook alone, so that only an installed helpers can be imported
    nbformat.write(nb, workdir / "dynamic_graph.ipynb")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "JUPYTER_PATH")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", COURSE_QUICK="1",
               JUPYTER_DATA_DIR=str(base / "jupyter"))  # no kernel specs but the environment's own
    runner = ("import sys, nbformat\nfrom nbclient import NotebookClient\n"
              "nb = nbformat.read(sys.argv[1], as_version=4)\n"
              "NotebookClient(nb, timeout=600, kernel_name='python3', allow_errors=True,\n"
              "               resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
              "nbformat.write(nb, sys.argv[1])\n")
    run = subprocess.run([str(python), "-c", runner, str(workdir / "dynamic_graph.ipynb"), str(workdir)],
                         capture_output=True, text=True, cwd=workdir, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    yield nbformat.read(workdir / "dynamic_graph.ipynb", as_version=4), python, env, workdir
    shutil.rmtree(venv, ignore_errors=True)  # about 3 GB, mostly CUDA libraries


def test_a_chapter_runs_in_colab_with_nothing_but_its_first_cell(colab):
    nb, python, _, _ = colab
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == [], "the chapter failed in the Colab-like environment"
    facts = json.loads(nb.cells[-1].outputs[0].text)
    assert facts["colab"] and facts["python"] == str(python)
    assert Path(facts["helpers"]).is_relative_to(python.parent.parent), "helpers was not installed by the first cell"
    assert facts["torch"].startswith("2.14.1")  # Colab's torch, not replaced
    for cell in nb.cells:
        for name in checked_exercises(cell):
            assert f"✅ {name}: passed" in "".join(o.get("text", "") for o in cell.outputs), cell.outputs


def test_every_helpers_module_imports_in_colab(colab):
    _, python, env, workdir = colab
    modules = sorted(p.stem for p in (ROOT / "helpers").glob("*.py") if p.stem != "__init__")
    code = "import importlib\nfor m in %r:\n    importlib.import_module('helpers.' + m)" % modules
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=workdir, env=env)
    assert result.returncode == 0, (
        f"a helpers module imports a package that is not among {COLAB_PACKAGES}: a package "
        "only maintainers need is imported inside the function that uses it\n" + result.stderr[-2000:])


# Found by mutation testing: each test below fails on a small, plausible change to the code.


def test_the_url_loses_a_trailing_slash_and_a_missing_config_is_a_clear_error(tmp_path):
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://example.org/course/\n")
    assert install_target(tmp_path).startswith("git+https://example.org/course@v")
    with pytest.raises(FileNotFoundError, match="run this from the course's root folder"):
        first_cell_source(tmp_path / "elsewhere")


def test_a_rewritten_cell_loses_the_outputs_of_the_old_one():
    old = nbformat.v4.new_code_cell('import sys\nif "google.colab" in sys.modules:\n    %pip install old')
    old.execution_count, old.outputs = 1, [nbformat.v4.new_output("stream", name="stdout", text="old\n")]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A chapter"), old])
    assert write_first_cell(nb, "the new cell")
    assert nb.cells[1].source == "the new cell"
    assert nb.cells[1].outputs == [] and nb.cells[1].execution_count is None


def test_a_notebook_without_code_gets_the_cell_after_its_title():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A chapter"),
                                         nbformat.v4.new_markdown_cell("Only text.")])
    assert write_first_cell(nb, "the cell")
    assert [c.source for c in nb.cells] == ["# A chapter", INTRO, "the cell", "Only text."]
    empty = nbformat.v4.new_notebook()
    assert write_first_cell(empty, "the cell")
    assert [c.source for c in empty.cells] == [INTRO, "the cell"]


# Colab installs the helpers without their dependencies, so its torch is whatever Colab has: the
# helpers say so on import when it is older than the course needs.
@pytest.mark.parametrize("version, too_old", [
    ("2.7.1+cu126", True), ("2.5.1", True), ("1.13.1", True),
    ("2.8.0+cu128", False), ("2.10.0", False), ("2.14.1", False), ("3.0.0", False),
    ("2.9.0a0+git1234567", False), ("a local build", False)])
def test_a_torch_older_than_the_course_needs_is_told_apart(version, too_old):
    assert helpers.MINIMUM_TORCH == (2, 8)
    assert helpers.torch_is_too_old(version) is too_old


def test_importing_the_helpers_beside_an_old_torch_warns_with_what_to_do(monkeypatch):
    import importlib
    from importlib import metadata

    real_version = metadata.version
    monkeypatch.setattr(metadata, "version",
                        lambda name: "2.7.1+cu126" if name == "torch" else real_version(name))
    with pytest.warns(UserWarning) as caught:
        importlib.reload(helpers)
    assert [str(w.message) for w in caught] == [
        "the course needs torch 2.8 or newer, and this is torch 2.7.1+cu126: some chapters may "
        "fail or hang. Upgrade with `pip install -U torch torchvision`, then restart the kernel."]
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the course's own torch: no warning
        importlib.reload(helpers)


def test_the_package_asks_pip_for_the_same_oldest_torch_as_the_warning():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={'.'.join(map(str, helpers.MINIMUM_TORCH))}" in dependencies
