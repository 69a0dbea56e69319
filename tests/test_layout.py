"""The package's structure: no module reaches into another module's private names.

A name with a leading underscore belongs to its module. A package's private modules
(``bpref.oracle.ops._kinds``) may be imported by the modules of that package, and by
nothing else.
"""

import ast
import pathlib

import bpref

PACKAGE = pathlib.Path(bpref.__file__).parent


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
  path = PACKAGE.parent.joinpath(*dotted.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _package_of(path: pathlib.Path) -> str:
  return _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]


def _private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def _reaches(source: str, own: str, package: str) -> list:
  """'line: what' for every private name of another bpref module that the source of module
  ``own`` (in ``package``) uses."""
  tree = ast.parse(source)
  aliases, found = {}, []

  def allowed(owner: str, name: str) -> bool:  # owner.name is a private module of our package
    return owner == package and _is_module(f"{owner}.{name}")

  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bpref":
      for alias in node.names:
        if _private(alias.name) and not allowed(node.module, alias.name):
          found.append(f"{node.lineno}: from {node.module} import {alias.name}")
        target = f"{node.module}.{alias.name}"
        aliases[alias.asname or alias.name] = target if _is_module(target) else None
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == "bpref":
          aliases[alias.asname or alias.name] = alias.name
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and aliases.get(node.value.id) and _private(node.attr)):
      owner = aliases[node.value.id]
      if owner != own and not allowed(owner, node.attr):
        found.append(f"{node.lineno}: {owner}.{node.attr}")
  return found


def test_no_module_uses_another_modules_private_names():
  found = [f"{path.relative_to(PACKAGE.parent)}:{where}" for path in sorted(PACKAGE.rglob("*.py"))
           for where in _reaches(path.read_text(), _module_name(path), _package_of(path))]
  assert not found, "private names used across modules:\n  " + "\n  ".join(found)


def test_the_check_sees_a_private_import():
  # Both spellings of reaching in are found, a subpackage's private module included; a
  # package's own private module is not.
  source = ("from bpref.oracle import truth\nfrom bpref.activations import _x\n"
            "from bpref.oracle.ops import _kinds\nfrom bpref.oracle import ops\ntruth._y\nops._kinds\n")
  found = _reaches(source, "bpref.oracle.probe", "bpref.oracle")
  assert [f.split(": ")[1] for f in found] == [
      "from bpref.activations import _x", "from bpref.oracle.ops import _kinds",
      "bpref.oracle.truth._y", "bpref.oracle.ops._kinds"]
  assert _reaches("from bpref.oracle.ops import _kinds\n", "bpref.oracle.ops.cli", "bpref.oracle.ops") == []


def test_a_module_of_the_flat_layout_is_found_with_a_warning():
  import importlib

  import pytest

  for old, new in bpref._MOVED.items():
    with pytest.warns(DeprecationWarning, match=f"bpref.{old} is now {new}"):
      module = getattr(bpref, old)
    assert module is importlib.import_module(new)
  with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
    bpref.nonexistent  # noqa: B018
