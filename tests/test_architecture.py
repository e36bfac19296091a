"""The layering of docs/architecture.md: which folder of score_sde may import which."""
import ast
import pathlib

import score_sde

PACKAGE = pathlib.Path(score_sde.__file__).resolve().parent

# folder -> the other folders of score_sde it may import (module-level or inside functions).
ALLOWED = {
    "diffusion": set(),
    "samplers": {"diffusion"},
    "models": set(),
    "metrics": {"io"},
    "io": {"models"},
    "experiment": {"diffusion", "samplers", "models", "metrics", "io"},
}


def imported_layers(path: pathlib.Path) -> set:
  layers = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "score_sde" and len(parts) > 1 and parts[1] in ALLOWED:
        layers.add(parts[1])
  return layers


def test_every_folder_is_a_known_layer():
  folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
  assert folders == set(ALLOWED)


def test_no_layer_imports_upwards():
  violations = []
  for layer, allowed in ALLOWED.items():
    for path in sorted((PACKAGE / layer).rglob("*.py")):
      extra = imported_layers(path) - allowed - {layer}
      if extra:
        violations.append(f"{path.relative_to(PACKAGE)} imports {sorted(extra)}")
  assert not violations, violations


def test_the_checker_sees_an_upward_import(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from score_sde.experiment import builders\n  return builders\n")
  assert imported_layers(bad) == {"experiment"}
