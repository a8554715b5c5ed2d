"""Sphinx configuration for the sklcrt documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors). No network is
needed: intersphinx is off and every page is built from this repository.
"""

from __future__ import annotations

import inspect
import os
import re
import reprlib
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import sklcrt  # noqa: E402

# -- Project ---------------------------------------------------------------------------------
project = "sklcrt"
author = "sklcrt developers"
copyright = "sklcrt developers"  # noqa: A001
release = sklcrt.__version__
version = ".".join(release.split(".")[:2])

# -- General ---------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]
# intersphinx is deliberately not enabled: the build must work without internet access.
templates_path = ["_templates"]
exclude_patterns = ["_build", "_static/**", "Thumbs.db", ".DS_Store"]
root_doc = "index"
default_role = "literal"  # `x` renders as code, never as an unresolved reference
nitpicky = False

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # types are documented in the numpydoc sections
autodoc_mock_imports: list[str] = []

numpydoc_show_class_members = False  # the class template lists the members instead
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# -- HTML ------------------------------------------------------------------------------------
_PAGES = sorted(page.stem for page in DOCS.glob("*.rst"))  # the narrative pages and api.rst
html_theme = "pydata_sphinx_theme"
html_title = f"sklcrt {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    # The page TOC column on the narrative pages only: an API page holds one object, and without
    # the column its 100-character doctest lines fit at 1,280 px.
    "secondary_sidebar_items": {page: ["page-toc"] for page in _PAGES},
}
# The left sidebar lists a section's pages: on the narrative pages it would be an empty column that
# narrows the code blocks, and on api.html it would repeat the tables. Only the API pages keep it.
html_sidebars = {page: [] for page in _PAGES}
html_static_path = ["_static"] if (DOCS / "_static").is_dir() else []
html_css_files = ["custom.css"]
html_show_sourcelink = False

# -- Generated page content ------------------------------------------------------------------
# Two pages list files that other parts of the project write: the example scripts in examples/
# and the validation tables and figures the examples save under docs/_static/validation/.
# Their reST is appended when the page is read, so the pages never point at a missing file.

EXAMPLES = ROOT / "examples"
VALIDATION = DOCS / "_static" / "validation"


def _title(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def _docstring_summary(path: Path) -> str | None:
    """First line of a script's module docstring, without importing it."""
    import ast

    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (SyntaxError, UnicodeDecodeError):
        return None
    return doc.strip().splitlines()[0].strip() if doc else None


def _examples_rst() -> str:
    files = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
    configs = sorted(EXAMPLES.glob("*.toml")) if EXAMPLES.is_dir() else []
    if not files and not configs:
        return "\n.. note::\n\n   No example scripts are in ``examples/`` yet.\n"
    parts = []
    for path in files:
        summary = _docstring_summary(path)
        parts.append(_title(f"``{path.name}``", "-"))
        if summary:
            parts.append(f"{summary}\n")
        parts.append(
            f"Run it with ``python examples/{path.name}``.\n\n"
            f".. literalinclude:: ../examples/{path.name}\n"
            "   :language: python\n"
        )
    for path in configs:
        parts.append(_title(f"``{path.name}``", "-"))
        parts.append(
            f"A configuration file for ``sklcrt run examples/{path.name}``.\n\n"
            f".. literalinclude:: ../examples/{path.name}\n"
            "   :language: toml\n"
        )
    return "\n" + "\n".join(parts)


def _validation_rst() -> str:
    if not VALIDATION.is_dir():
        return ""
    files = sorted(
        p
        for p in VALIDATION.iterdir()
        if p.is_file() and p.suffix.lower() in {".csv", ".png", ".svg"}
    )
    if not files:
        return ""
    parts = [_title("Results", "-")]
    for path in files:
        rel = f"_static/validation/{path.name}"
        caption = path.stem.replace("_", " ").capitalize()
        if path.suffix.lower() == ".csv":
            parts.append(
                f".. csv-table:: {caption}\n"
                f"   :file: {rel}\n"
                "   :header-rows: 1\n"
                "   :class: validation-table\n"
            )
        else:
            parts.append(f".. figure:: {rel}\n   :width: 90%\n\n   {caption}\n")
    return "\n" + "\n".join(parts)


def _literal(text: str) -> str:
    body = "\n".join(("   " + line) if line.strip() else "" for line in text.splitlines())
    return f".. code-block:: text\n   :class: wrap\n\n{body}\n"  # wrap, never scroll sideways


def _command_line_rst() -> str:
    """The ``--help`` of ``sklcrt`` and of each subcommand, from the real parser."""
    import argparse

    os.environ["COLUMNS"] = "96"  # argparse wraps help to the terminal width
    from sklcrt.cli import build_parser

    parser = build_parser()
    parts = [_title("``sklcrt --help``", "-"), _literal(parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(_title(f"``sklcrt {name} --help``", "-"))
                parts.append(_literal(sub.format_help()))
    return "\n" + "\n".join(parts)


_GENERATED = {
    "examples": _examples_rst,
    "validation": _validation_rst,
    "command_line": _command_line_rst,
}


_SHAPE = re.compile(r"shape \(([^()]*)\)")
_TRAILING_UNDERSCORE = re.compile(r"(?<![`\w\\])([A-Za-z]\w*)_(?=[\s,)*+/-]|$)")


def _escape_shape(match: re.Match) -> str:
    return "shape (" + _TRAILING_UNDERSCORE.sub(r"\1\\_", match.group(1)) + ")"


def _escape_fitted_names_in_shapes(app, what, name, obj, options, lines):
    """Let docstrings write ``of shape (n_strata_,)`` as scikit-learn users read it.

    In reST a word ending in ``_`` is a hyperlink reference, so a fitted attribute named inside a
    shape would be an unknown link target; escape the underscore there (only outside literals).
    """
    for i, line in enumerate(lines):
        if "shape (" in line:
            lines[i] = _SHAPE.sub(_escape_shape, line)


def _choices_comments() -> dict[str, list[str]]:
    """The ``#:`` comments of :mod:`sklcrt._choices`, the one home of the allowed values."""
    from sphinx.pycode import ModuleAnalyzer

    docs = ModuleAnalyzer.for_module("sklcrt._choices").find_attr_docs()
    return {name: list(lines) for (_, name), lines in docs.items()}


def _describe_constants(app, what, name, obj, options, lines):
    """Give module constants without a ``#:`` comment a description, not their type's docstring.

    A re-exported constant (``RESAMPLING_METHODS`` in :mod:`sklcrt.resampling`, from
    :mod:`sklcrt._choices`) loses its comment, and autodoc would show "Built-in immutable
    sequence." in the API tables; use the comment where it is defined, else state the value.
    """
    if what not in ("data", "attribute"):
        return
    own = (inspect.getdoc(type(obj)) or "").strip()
    if lines and "\n".join(lines).strip() not in (own, ""):
        return
    short = reprlib.repr(obj)
    if len(short) <= 70 and "..." not in short:
        value = f"Value: ``{short}``."
    else:  # the whole value is on the constant's own page
        value = f"A {type(obj).__name__} of {len(obj)} entries."
    comment = _choices_comments().get(name.rpartition(".")[2])
    lines[:] = [*[line for line in comment if line.strip()], "", value] if comment else [value]


def _skip_metadata_routing(app, what, name, obj, skip, options):
    """Hide scikit-learn's generated ``set_*_request`` methods (metadata routing plumbing)."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def _append_generated(app, docname, source):
    if docname in _GENERATED:
        source[0] = source[0] + _GENERATED[docname]()


def setup(app):
    app.connect("source-read", _append_generated)
    app.connect("autodoc-process-docstring", _escape_fitted_names_in_shapes)
    app.connect("autodoc-process-docstring", _describe_constants, priority=100)  # before numpydoc
    app.connect("autodoc-skip-member", _skip_metadata_routing)
