"""Smoke runs: every script in experiments/ runs end to end with --quick (tiny sizes, seconds),
but the regression guard, which .ci/run runs in full."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Script -> extra arguments; `{tmp}` is the test's temporary directory: runs and outputs go there
# (pytest removes it; no file of docs/ is written).
SCRIPTS = {
    "bench_device.py": [],
    "bench_models.py": [],
    "bench_reference.py": [],  # --quick: our side only (no torch in CI)
    "bench_samplers.py": [],
    "bench_train_step.py": [],
    "cascade_study.py": ["--runs", "{tmp}"],  # --quick writes its doc and figure there too
    "controlnet_study.py": ["--runs", "{tmp}"],  # --quick writes its doc and figure there too
    "digits_guidance.py": ["--figure", "{tmp}/guidance.png"],
    "dit_latent_study.py": ["--runs", "{tmp}"],  # --quick writes its doc and figure there too
    "inpainting_bias.py": [],
    "interpolation_grid.py": ["--out", "{tmp}/interpolation.png"],
    "few_step_study.py": ["--runs", "{tmp}", "--figure", "{tmp}/few_step.png",
                          "--doc", "{tmp}/few_step.md"],
    "likelihood_nfe.py": ["--workdir", "{tmp}"],
    "nfe_study.py": ["--figure", "{tmp}/nfe_study.png", "--doc", "{tmp}/beyond.md"],
    "toy_samplers_figure.py": ["--out", "{tmp}/toy_samplers.png"],
    "train_parity.py": [],  # --quick: our side only (no torch in CI), a temporary workdir
}


# Run in full by .ci/run after the tests, so no --quick smoke run here.
CI_SCRIPTS = ("regression_guard.py",)


def test_every_script_has_a_smoke_run():
  scripts = sorted(n for n in os.listdir(os.path.join(ROOT, "experiments")) if n.endswith(".py"))
  assert scripts == sorted([*SCRIPTS, *CI_SCRIPTS])


def test_ci_runs_the_regression_guard_in_full():
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    commands = [line.strip() for line in f if not line.lstrip().startswith(("#", "echo"))]
  for script in CI_SCRIPTS:
    assert f"python experiments/{script}" in commands, script


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_quick_run(script, tmp_path):
  args = [a.format(tmp=tmp_path) for a in SCRIPTS[script]]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, os.path.join("experiments", script), "--quick", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  outputs = [a for a in args if a.startswith(str(tmp_path)) and a != str(tmp_path)]
  for a in outputs:
    assert os.path.getsize(a) > 0, a
  if str(tmp_path) in args:  # a runs folder or workdir: the script trained into it
    assert any(p.is_dir() for p in tmp_path.iterdir()), "no run or checkpoint folder written"
