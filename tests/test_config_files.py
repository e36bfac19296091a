"""Config files load from any working directory: their `configs.*` imports resolve through the
package root of the file (config_files.add_package_root), in scripts and both console entry points."""
import os
import subprocess
import sys

from score_sde.experiment import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_config_file_imports_its_bases_from_any_working_directory(tmp_path, monkeypatch):
  """load_config_file puts the directory above the config's outermost package on sys.path, so a
  config that imports its base as a package (`from configs import ...`) loads from a script in
  experiments/ or a console entry point (score-sde-convert), where the repository is not on it."""
  package = tmp_path / "repo" / "my_configs"
  (package / "digits").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "digits" / "__init__.py").write_text("")
  (package / "base.py").write_text("def get_config():\n  return {'lr': 2e-4}\n")
  (package / "digits" / "small.py").write_text(
      "from my_configs import base\n\ndef get_config():\n  return dict(base.get_config(), n=3)\n")
  monkeypatch.setattr("sys.path", [p for p in sys.path if p not in ("", ".", os.getcwd())])
  monkeypatch.chdir(tmp_path)
  monkeypatch.delitem(sys.modules, "my_configs", raising=False)
  assert config_files.load_config_file("repo/my_configs/digits/small.py", "--config") == {"lr": 2e-4,
                                                                                         "n": 3}
  assert sys.path[0] == str(tmp_path / "repo")
  for name in ("my_configs", "my_configs.base"):
    sys.modules.pop(name, None)


def test_the_command_line_loads_a_repository_config_from_another_directory(tmp_path):
  """`score-sde --config /path/to/repo/configs/...` run elsewhere (the console script has neither
  the repository nor the working directory on sys.path): the config loads, and the command stops
  only at the mode's own check (--mode inpaint without --input)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  cmd = [sys.executable, "-c", "from score_sde.experiment import cli; cli.main()", "--config",
         os.path.join(ROOT, "configs", "digits", "ddpmpp_vp_small.py"), "--workdir",
         str(tmp_path / "wd"), "--mode", "inpaint"]
  result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert "ModuleNotFoundError" not in result.stderr, result.stderr[-2000:]
  assert "--mode inpaint needs --input" in result.stderr, result.stderr[-2000:]
