"""Sphinx configuration of the mdxrd documentation (``make docs``: sphinx-build -W, warnings are errors).

Pages are Markdown (MyST). Three pages are generated here on every build from the one place that
defines their content, so they are never written twice: the configuration reference from
``config/config.schema.yaml``, the crystal sheet's columns from ``config/crystals.schema.yaml`` and
the dataset's columns from :data:`mdxrd.dataset.COLUMNS`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(DOCS))

import reference  # noqa: E402  (docs/reference.py: the generated pages)

project = "mdxrd"
author = "the mdxrd developers"
copyright = "2026, the mdxrd developers"  # noqa: A001

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
html_theme = "furo"
html_static_path = ["_static"]
html_title = "mdxrd"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = True
napoleon_use_ivar = True  # dataclass Attributes sections: no second description of each field
suppress_warnings = ["myst.header"]
nitpicky = False

reference.write_generated(DOCS / "_generated")

_CODE = re.compile(r"(:math:`[^`]*`|``[^`]*``|`[^`]*`)")


def _escape_bars(app, what, name, obj, options, lines):  # noqa: ARG001 - Sphinx's hook signature
    """Docstrings write absolute values as |x| (plain text for a reader of the source); reStructuredText
    would read them as substitutions. Escape the bars outside code and math."""
    for i, line in enumerate(lines):
        if "|" in line and not line.lstrip().startswith(("+", "|")):
            parts = _CODE.split(line)
            lines[i] = "".join(p if _CODE.fullmatch(p) else p.replace("|", r"\|") for p in parts)


def setup(app):
    app.connect("autodoc-process-docstring", _escape_bars)
