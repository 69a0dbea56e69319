"""The repository's scripts/ as modules, for the tests that check them."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(name: str):
  """scripts/<name>.py, imported once under the name ``bpref_scripts_<name>``."""
  key = f"bpref_scripts_{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
  return sys.modules[key]
