"""A Sphinx extension of the book: one id per exercise and per solution on a page.

sphinx-exercise gives the content of every exercise the id "exercise-content", and of every
solution "solution-content", so a page with three exercises holds each id three times. HTML
allows an id once per page, and screen readers and links to a fragment find only the first.
This numbers them in the order of the page: "exercise-content-1", "exercise-content-2", ...
Loaded by `_config.yml` (sphinx.local_extensions); tests/test_book.py checks every page.
"""

from docutils import nodes

SHARED_IDS = ("exercise-content", "solution-content")


def number_shared_ids(app, doctree, docname) -> None:
    seen = dict.fromkeys(SHARED_IDS, 0)
    for section in doctree.findall(nodes.section):
        for shared in SHARED_IDS:
            if shared in section["ids"]:
                seen[shared] += 1
                section["ids"] = [f"{shared}-{seen[shared]}" if i == shared else i for i in section["ids"]]


def setup(app):
    # doctree-resolved comes after sphinx-exercise's post-transforms, which add solution sections.
    app.connect("doctree-resolved", number_shared_ids)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
