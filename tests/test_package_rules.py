"""Package rules, read from the source with ``ast`` (no import runs):
``tracer`` never imports ``contrib`` or ``agent_sim``; ``contrib`` never
imports ``agent_sim``; ``agent_sim`` never imports ``tracer`` or ``contrib``.
``sql_obfuscation`` is a leaf that both ``contrib`` and ``agent_sim`` use: it
imports the standard library only.

Static ``import``/``from`` statements anywhere in a module count (inside
functions too). ``tracer._patching`` naming contrib modules as strings for
``importlib`` is the registry's plugin lookup, not an import, and not checked.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator

from tests.utils import REPO

FORBIDDEN = {"tracer": ("contrib", "agent_sim"), "contrib": ("agent_sim",), "agent_sim": ("tracer", "contrib")}
# Packages that may import nothing but the standard library.
LEAVES = ("sql_obfuscation",)

# Known violations, each with its reason; the test fails when one is fixed
# (remove it here) as well as when a new one appears.
KNOWN: dict[tuple[str, str], str] = {}


def imported_modules(source: str) -> list[str]:
    """Absolute module names a module's source imports (relative imports
    stay inside their own package and are left out)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def package_imports(package: str) -> Iterator[tuple[str, str]]:
    """(file relative to the repository, imported module) for every module of
    ``package``."""
    for root, _dirs, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, REPO).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                for module in imported_modules(f.read()):
                    yield rel, module


def violations() -> set[tuple[str, str]]:
    """(file, imported module) pairs that break a rule."""
    found = set()
    for package, banned in FORBIDDEN.items():
        found |= {(rel, module) for rel, module in package_imports(package) if module.split(".")[0] in banned}
    for package in LEAVES:
        found |= {
            (rel, module)
            for rel, module in package_imports(package)
            if module.split(".")[0] not in sys.stdlib_module_names and module.split(".")[0] != package
        }
    return found


def test_imported_modules_sees_every_import_form() -> None:
    src = "import a.b, c\nfrom d.e import f\nfrom . import g\ndef h():\n    from agent_sim import x\n"
    assert imported_modules(src) == ["a.b", "c", "d.e", "agent_sim"]


def test_packages_import_only_what_the_rules_allow() -> None:
    found = violations()
    new = sorted(found - set(KNOWN))
    fixed = sorted(set(KNOWN) - found)
    assert not new, f"imports that break the package rules: {new}"
    assert not fixed, f"fixed (remove from KNOWN): {fixed}"
