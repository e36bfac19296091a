"""The CPU backend as several devices (`--cpu_devices`): sampling and the bits/dim solve split their
batch over the devices, with the results of one device."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.subprocess_env import ROOT, cpu_env

# Each test compiles the tiny model in two or three subprocesses: a minute or two on a CPU.
pytestmark = pytest.mark.slow


def _run(cmd, env):
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def test_sampler_and_bits_per_dim_split_the_batch_over_two_devices(tmp_path):
  outputs = {}
  for n in (1, 2):
    out = tmp_path / f"devices_{n}.npz"
    _run([sys.executable, "-m", "tests.helpers.split_batch_worker", str(out)], cpu_env(n))
    outputs[n] = np.load(out)
  one, two = outputs[1], outputs[2]
  assert int(one["devices"]) == 1 and int(two["devices"]) == 2
  # Split, each device computes half the batch: the per-device FLOP of the compiled functions
  # halve (a replicated computation would keep them; the gathers add a little).
  for name in ("sampler_flops", "bpd_flops"):
    ratio = float(two[name]) / float(one[name])
    assert 0.45 < ratio < 0.6, (name, ratio)
  # Returned whole on every device, so the host reads them as before.
  assert bool(two["replicated"])
  # The same draws (threefry is partitionable) and per-example networks: the same samples and
  # bits/dim up to float rounding (per-sample step control: a sample's solve ignores the batch).
  np.testing.assert_allclose(two["samples"], one["samples"], atol=1e-5)
  np.testing.assert_allclose(two["bpd"], one["bpd"], rtol=1e-5)


def test_command_line_runs_the_cpu_as_two_devices_and_resumes_on_another_count(tmp_path):
  """--cpu_devices overrides XLA_FLAGS' device count; a checkpoint of 2 devices resumes on 1 and
  back (orbax refused one saved on another topology: "Topology mismatch")."""
  config = tmp_path / "tiny.py"
  config.write_text("from tests.helpers.tiny_config import tiny_config\n\n\n"
                    "def get_config():\n  return tiny_config()\n")
  workdir = tmp_path / "wd"

  def train(n_iters, devices):
    return _run([sys.executable, "main.py", "--config", str(config), "--workdir", str(workdir),
                 "--mode", "train", "--cpu_devices", str(devices),
                 f"--config.training.n_iters={n_iters}"], cpu_env(1))

  result = train(2, 2)
  assert "2 cpu device(s) in 1 process(es)" in result.stderr, result.stderr[-2000:]
  assert "Resuming" in train(3, 1).stderr
  assert "Resuming" in train(4, 2).stderr
  assert os.path.isdir(workdir / "checkpoints" / "4")
