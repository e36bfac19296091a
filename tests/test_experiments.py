"""Smoke runs: every script in experiments/ runs end to end with --quick (tiny sizes, seconds),
but the regression guard, which .ci/run runs in full."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Script -> (extra arguments, what its --quick run writes). Each runs without PYTHONPATH, with
# TMPDIR set to the test's temporary directory, so the temporary folders --quick writes its runs, docs and figures
# into by default are there (pytest removes it); the files named must appear in it, and nothing
# under docs/ may change.
SCRIPTS = {
    "bench_device.py": ([], []),
    "bench_models.py": ([], []),
    "bench_reference.py": ([], []),  # --quick: our side only (no torch in CI)
    "bench_samplers.py": ([], []),
    "bench_train_step.py": ([], []),
    "cascade_study.py": ([], ["doc.md", "f.png", "checkpoints"]),
    "controlnet_study.py": ([], ["doc.md", "f.png", "checkpoints"]),
    "digits_guidance.py": (["--figure", "{tmp}/guidance.png"], ["guidance.png"]),
    "dit_latent_study.py": ([], ["dit_latent.md", "f.png", "checkpoints"]),
    "inpainting_bias.py": ([], []),
    "interpolation_grid.py": ([], ["interpolation.png"]),
    "few_step_study.py": ([], ["few_step.md", "few_step.png", "checkpoints", "reflow_pairs"]),
    "likelihood_nfe.py": ([], ["checkpoints"]),
    "nfe_study.py": ([], ["beyond.md", "nfe_study.png"]),
    "toy_samplers_figure.py": ([], ["toy_samplers.png"]),
    "train_parity.py": ([], []),  # --quick: our side only (no torch in CI), a deleted workdir
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


def _docs_files() -> dict:
  docs = os.path.join(ROOT, "docs")
  return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
          for d, _, names in os.walk(docs) for n in names}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_quick_run(script, tmp_path):
  args, outputs = SCRIPTS[script]
  args = [a.format(tmp=tmp_path) for a in args]
  # As a user runs it: from the repository root, PYTHONPATH unset (the package is installed).
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path))
  docs_before = _docs_files()
  result = subprocess.run([sys.executable, os.path.join("experiments", script), "--quick", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  assert _docs_files() == docs_before, "a --quick run wrote into docs/"
  for name in outputs:
    found = [p for p in tmp_path.rglob(name) if p.is_dir() or p.stat().st_size > 0]
    assert found, f"{name} was not written under {tmp_path}"
