"""Sphinx configuration of torchrl_vlm's API reference (``make docs``).

The build works offline (no intersphinx inventories are fetched: links to TorchRL and PyTorch stay plain
text) and treats every warning as an error (``sphinx-build -W``). Besides the usual extensions:

- :func:`check_public_names_documented`: every name in the ``__all__`` of ``torchrl_vlm`` and of its public
  modules has an entry, and every module with an ``__all__`` has a page (a warning, so an error, otherwise);
- :func:`constant_docstring`: a re-exported constant gets the ``#:`` comment written where it is defined;
- :func:`link_reexported_names`: a docstring's reference by another import path (``torchrl_vlm.RenderClips``,
  a submodule's path) links to the entry where the name is documented;
- :func:`skip_foreign_members`: ``:inherited-members:`` shows this package's members, not TorchRL's;
- napoleon leaves attribute and property docstrings as they are (:func:`_napoleon_except_attributes`).
"""
from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import sys
from pathlib import Path

from sphinx.ext import napoleon
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Importing the library never reaches a model hub or the wandb servers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torchrl_vlm  # noqa: E402

project = "torchrl_vlm"
author = "torchrl_vlm contributors"
copyright = "torchrl_vlm contributors"
version = release = torchrl_vlm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_copybutton",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []

# -- autodoc / napoleon ---------------------------------------------------------------------------
# Members are asked for per class (``:members:``), so that ``automodule`` gives a module's docstring only.
autodoc_default_options = {"member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
# A method that overrides TorchRL's without a docstring of its own is not documented with TorchRL's text.
autodoc_inherit_docstrings = False
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections as :ivar: fields, so they never collide with the attributes autodoc documents.
napoleon_use_ivar = True
add_module_names = False
python_display_short_literal_types = True

_napoleon_process_docstring = napoleon._process_docstring


def _napoleon_except_attributes(app, what, name, obj, options, lines):
    """Napoleon, except on attributes and properties: there it reads a first line ``X: y`` as "type X,
    description y", while this package's attribute docstrings say "X: y" in prose (``The clip length L: the
    one given, ...``). None of them uses a napoleon section."""
    if what not in ("attribute", "property"):
        _napoleon_process_docstring(app, what, name, obj, options, lines)


# napoleon's setup(), which runs after this file, connects whatever this name holds then.
napoleon._process_docstring = _napoleon_except_attributes

# -- myst (README.md is the landing page) ---------------------------------------------------------
myst_heading_anchors = 3

# -- HTML -------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"torchrl_vlm {version}"
html_static_path = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": []}
html_show_sourcelink = True
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# -- the public names -------------------------------------------------------------------------------
#: Every module whose ``__all__`` is public API; each of their names must have an entry in the reference.
PUBLIC_MODULES = [
    "torchrl_vlm.envs",
    "torchrl_vlm.replay",
    "torchrl_vlm.scoring",
    "torchrl_vlm.teacher",
    "torchrl_vlm.covr",
    "torchrl_vlm.objectives",
    "torchrl_vlm.probe",
    "torchrl_vlm.training",
    "torchrl_vlm.missions",
    "torchrl_vlm.frames",
    "torchrl_vlm.hf_vlm",
    "torchrl_vlm.testing",
    "torchrl_vlm.loopback",
]
#: Modules of the package with an ``__all__`` that have no page of their own (a command's, an internal helper's).
NOT_IN_REFERENCE = {"torchrl_vlm._checks", "torchrl_vlm._lazy"}
#: Names documented at another path than ``module.name`` (none today).
DOCUMENTED_ELSEWHERE: dict[str, str] = {}
#: The page that lists the names importable from ``torchrl_vlm`` itself.
TOP_LEVEL_PAGE = Path(__file__).parent / "reference" / "torchrl_vlm.rst"

logger = logging.getLogger(__name__)


def _defining_module(module_name: str, name: str) -> str | None:
    """The module an ``import`` in ``module_name`` takes ``name`` from (``None``: defined there or unknown)."""
    module = importlib.import_module(module_name)
    exports = getattr(module, "_EXPORTS", None)
    if isinstance(exports, dict) and isinstance(exports.get(name), str) and exports[name] != module_name:
        return exports[name]
    source = getattr(module, "__file__", None)
    if not source:
        return None
    for node in ast.walk(ast.parse(Path(source).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
            return node.module
    return None


def constant_docstring(app, what, name, obj, options, lines):
    """A re-exported constant (``torchrl_vlm.envs.EVENT_NAMES``) gets the ``#:`` comment written where it is
    defined (``torchrl_vlm/envs/minigrid_names.py``), not the docstring of its type (``tuple``)."""
    if what != "data" or "." not in name:
        return
    module_name, attr = name.rsplit(".", 1)
    for _ in range(4):
        docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        if ("", attr) in docs:
            lines[:] = list(docs[("", attr)])
            return
        module_name = _defining_module(module_name, attr)
        if module_name is None:
            break
    lines[:] = []


def _resolve(path: str):
    """The object at a dotted ``path`` under ``torchrl_vlm`` (``None`` where there is none)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _documented_as(path: str, objects) -> str | None:
    """Where the object at ``path`` is documented: ``path`` itself, or a public module's entry of the same
    name and the same object (a name re-exported from another public module)."""
    path = DOCUMENTED_ELSEWHERE.get(path, path)
    if path in objects and not objects[path].aliased:
        return path
    name = path.rsplit(".", 1)[-1]
    obj = _resolve(path)
    for module_name in PUBLIC_MODULES:
        candidate = f"{module_name}.{name}"
        if candidate in objects and _resolve(candidate) is obj:
            return candidate
    return None


def _modules_with_all() -> list[str]:
    """The package's top-level modules and subpackages that declare an ``__all__`` (read from source)."""
    found = []
    for info in pkgutil.iter_modules(torchrl_vlm.__path__):
        folder = Path(torchrl_vlm.__path__[0])
        source = folder / info.name / "__init__.py" if info.ispkg else folder / f"{info.name}.py"
        tree = ast.parse(source.read_text())
        if any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
               for node in tree.body):
            found.append(f"torchrl_vlm.{info.name}")
    return found


def check_public_names_documented(app, env):
    """Warns (an error under ``-W``) about every public name without an entry, so the reference stays whole."""
    objects = env.get_domain("py").objects
    for module_name in PUBLIC_MODULES:
        for name in importlib.import_module(module_name).__all__:
            if _documented_as(f"{module_name}.{name}", objects) is None:
                logger.warning(f"public name {module_name}.{name} has no entry in the API reference (docs/reference/)")
    for module_name in _modules_with_all():
        if module_name not in PUBLIC_MODULES and module_name not in NOT_IN_REFERENCE:
            logger.warning(f"{module_name} has an __all__ but no page: add it to PUBLIC_MODULES in docs/conf.py "
                           f"and give it one in docs/reference/, or list it in NOT_IN_REFERENCE")
    top_level_page = TOP_LEVEL_PAGE.read_text()
    for name in torchrl_vlm.__all__:
        if _documented_as(f"torchrl_vlm.{name}", objects) is None:
            logger.warning(f"public name torchrl_vlm.{name} has no entry in the API reference (docs/reference/)")
        if f".{name}\n" not in top_level_page:
            logger.warning(f"public name torchrl_vlm.{name} is not listed in {TOP_LEVEL_PAGE.name}")


def link_reexported_names(app, env, node, contnode):
    """A docstring's reference to a name by another of its import paths (``:class:`~torchrl_vlm.RenderClips```,
    ``torchrl_vlm.scoring.oracle.MiniGridEventScorer``) links to the entry where the name is documented."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip(".~")
    module, cls = node.get("py:module"), node.get("py:class")
    # the target as written, or relative to the class and module it is written in
    objects = env.get_domain("py").objects
    candidates = [target] if target.startswith("torchrl_vlm.") else [
        ".".join(filter(None, (module, cls, target))), ".".join(filter(None, (module, target)))]
    # a docstring inherited from another module (a private base's): a name one public module documents
    owners = [m for m in PUBLIC_MODULES if f"{m}.{target.split('.')[0]}" in objects]
    if len(owners) == 1:
        candidates.append(f"{owners[0]}.{target}")
    for candidate in candidates:
        if not candidate.startswith("torchrl_vlm.") or _resolve(candidate) is None:
            continue
        parts = candidate.split(".")
        # the longest prefix documented somewhere, and the rest (a method or attribute) after it
        for i in range(len(parts), 1, -1):
            documented = _documented_as(".".join(parts[:i]), objects)
            if documented is not None:
                new_target = ".".join([documented, *parts[i:]])
                if new_target not in objects:
                    return None
                return env.get_domain("py").resolve_xref(
                    env, node["refdoc"], app.builder, node["reftype"], new_target, node, contnode)
    return None


def skip_foreign_members(app, what, name, obj, skip, options):
    """A class documented with ``:inherited-members:`` shows what it inherits from this package (its private
    bases' methods), never TorchRL's or PyTorch's members (documented there)."""
    if what not in ("class", "exception"):
        return None
    func = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    module = getattr(func, "__module__", None)
    if callable(func) and isinstance(module, str) and not module.startswith("torchrl_vlm"):
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", constant_docstring)
    app.connect("autodoc-skip-member", skip_foreign_members)
    app.connect("env-check-consistency", check_public_names_documented)
    app.connect("missing-reference", link_reexported_names)
