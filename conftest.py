"""pytest's set-up for the whole repository (tests/ has its own conftest.py).

`make test` also runs the examples in the library's docstrings (``--doctest-modules`` over torchrl_vlm/,
pyproject.toml). Each runs in a temporary folder of its own, so that an example that writes a file
(``CachedScorer(..., "verdicts.sqlite")``) leaves nothing in the working tree.
"""
import pytest


@pytest.fixture(autouse=True)
def _doctests_in_a_temporary_folder(request, monkeypatch):
    # Tests are pytest.Function items; a docstring's examples are a DoctestItem.
    if not isinstance(request.node, pytest.Function):
        monkeypatch.chdir(request.getfixturevalue("tmp_path"))
