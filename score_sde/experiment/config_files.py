"""Experiment config files: Python files with ``get_config()`` that import their bases as a package
(``from configs import architectures``), loaded from any working directory."""
from __future__ import annotations

import importlib.util
import os
import sys


def add_package_root(path: str) -> str:
  """Puts the directory above the outermost package (folders with ``__init__.py``) holding the
  file at ``path`` first on sys.path, so its ``configs.*`` imports resolve; returns it."""
  root = os.path.dirname(os.path.abspath(path))
  while os.path.isfile(os.path.join(root, "__init__.py")):
    root = os.path.dirname(root)
  if root not in sys.path:
    sys.path.insert(0, root)
  return root


def load_config_file(path: str, field: str):
  """``get_config()`` of the config file at ``path`` (relative to the working directory);
  ``field`` names the option that gave it, for the error."""
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"{field}={path!r} is not a config file; name one such as "
                            "configs/digits/ddpmpp_vp_small.py (relative to the repository root).")
  add_package_root(path)
  spec = importlib.util.spec_from_file_location("score_sde_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
