"""Every public name documents itself: its own docstring cites the section of docs/THEORY.md it
implements (``THEORY §N`` or ``THEORY §N.M``, a real heading there), every ``§`` reference in it
resolves, and a function's says what it returns. Also: ``dir(tracer_theory)`` lists only the
package's public contents. Reads docstrings and one file; imports each public name's module."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

import tracer_theory as tt

THEORY = Path(__file__).resolve().parents[1] / "docs" / "THEORY.md"
#: ``## 2. The contrastive target …`` → "2", ``### 4.7 WMA: …`` → "4.7".
HEADING = re.compile(r"^#{2,6}[ \t]+(\d+(?:\.\d+)*)\.?[ \t]", re.M)
CITATION = re.compile(r"THEORY §(\d+(?:\.\d+)*)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
RETURNS = re.compile(r"\b[Rr]eturns\b|→|->")


def sections() -> set[str]:
    """The numbers of the numbered headings of docs/THEORY.md."""
    return set(HEADING.findall(THEORY.read_text(encoding="utf-8")))


def own_doc(obj: object) -> str | None:
    """The object's own docstring: a class's from its body, never a base class's nor the
    ``Name(field: type, …)`` signature that dataclasses (equinox modules) put in its place."""
    if not inspect.isclass(obj):
        return obj.__doc__
    doc = vars(obj).get("__doc__")
    return None if doc and re.fullmatch(rf"{obj.__name__}\(.*\)", doc, re.S) else doc


def test_theory_headings_are_parsed():
    found = sections()
    assert {"1", "2", "3", "3.1", "3.5", "4.2", "4.7", "7", "7.4"} <= found, sorted(found)
    assert "9.9" not in found and "4.9" not in found


@pytest.mark.parametrize("name", tt.__all__)
def test_public_name_has_its_own_docstring_citing_theory(name):
    obj = getattr(tt, name)
    doc = own_doc(obj)
    assert doc and doc.strip(), f"tt.{name} has no docstring of its own"
    cited = CITATION.findall(doc)
    assert cited, f"tt.{name}'s docstring cites no section as 'THEORY §N' or 'THEORY §N.M'"
    known = sections()
    missing = sorted(set(SECTION.findall(doc)) - known)
    assert not missing, f"tt.{name}'s docstring cites §{missing}, not headings of {THEORY.name}"


@pytest.mark.parametrize("name", [n for n in tt.__all__ if not inspect.isclass(getattr(tt, n))])
def test_public_function_says_what_it_returns(name):
    doc = own_doc(getattr(tt, name)) or ""
    assert RETURNS.search(doc), f"tt.{name}'s docstring does not say what it returns"


def test_dir_lists_only_public_contents():
    names = dir(tt)
    assert names == sorted(set(names)) and set(tt.__all__) <= set(names)
    assert "annotations" not in names and "importlib" not in names and "Any" not in names
    extra = [n for n in names if n not in tt.__all__ and not n.startswith("__")]
    # beyond __all__ and dunders: only public submodules that have been imported
    assert all(not n.startswith("_") and isinstance(getattr(tt, n), ModuleType)
               and getattr(tt, n).__name__ == f"tracer_theory.{n}" for n in extra), extra
