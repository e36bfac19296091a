"""Training system: exact resume after a kill, sharded steps, multi-process runs, bad input."""
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.subprocess_env import cpu_env

# Each test trains in subprocesses (one to four devices, two processes): minutes on a CPU.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker_cmd(out, workdir, n_iters, *extra):
  return [sys.executable, "-m", "tests.helpers.train_worker", str(out), str(workdir), str(n_iters),
          *extra]


def _run(cmd, env, timeout=600):
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]


def _params(npz):
  return {k: npz[k] for k in npz.files if k.startswith("[")}


def _assert_same_params(a, b, rtol=0.0, atol=0.0):
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys() and pa
  for k in pa:
    np.testing.assert_allclose(pa[k], pb[k], rtol=rtol, atol=atol, err_msg=k)


def _losses_by_step(npz):
  return dict(zip(npz["steps"].tolist(), npz["losses"].tolist()))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """Reference: 8 uninterrupted steps on one device."""
  d = tmp_path_factory.mktemp("uninterrupted")
  _run(_worker_cmd(d / "out.npz", d / "wd", 8), cpu_env(1))
  return np.load(d / "out.npz")


def _checkpoint_steps(workdir):
  meta = os.path.join(workdir, "checkpoints-meta")
  if not os.path.isdir(meta):
    return []
  return sorted(int(n) for n in os.listdir(meta) if n.isdigit())


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _resume_to_8_and_compare(tmp_path, workdir, uninterrupted):
  """Resumes the run in ``workdir`` to step 8: parameters and every logged loss bit-identical to
  the uninterrupted run's."""
  _run(_worker_cmd(tmp_path / "out.npz", workdir, 8), cpu_env(1))
  resumed = np.load(tmp_path / "out.npz")
  _assert_same_params(resumed, uninterrupted)  # bit-identical
  ref = _losses_by_step(uninterrupted)
  for step, loss in _losses_by_step(resumed).items():
    assert loss == ref[step], step
  return resumed


@pytest.mark.parametrize("kill_when", ["saved", "saving"])
def test_kill_and_resume_is_exact(uninterrupted, tmp_path, kill_when):
  """SIGKILL at the save of step 4 (committed, or in flight), then resume: bit-identical to no kill."""
  workdir = tmp_path / "wd"
  killed = subprocess.run(_worker_cmd(tmp_path / "ignored.npz", workdir, 8, "--kill_at", "4",
                                      "--kill_when", kill_when),
                          env=cpu_env(1), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
  resumed_from = 4 if kill_when == "saved" else 2
  assert _checkpoint_steps(workdir) == [resumed_from]
  if kill_when == "saving":  # step 4 was left half-written, as orbax's temporary directory
    assert any(n.startswith("4.") for n in os.listdir(workdir / "checkpoints-meta"))
  resumed = _resume_to_8_and_compare(tmp_path, workdir, uninterrupted)
  assert set(range(resumed_from + 1, 9)) <= set(_losses_by_step(resumed))


def test_sigterm_saves_at_the_step_reached_and_resume_is_exact(uninterrupted, tmp_path):
  """SIGTERM after step 5 (between the preemption saves of steps 4 and 6): the run saves step 5,
  exits with 143 and a message, and the resumed run ends bit-identical to the uninterrupted one."""
  workdir = tmp_path / "wd"
  stopped = subprocess.run(_worker_cmd(tmp_path / "ignored.npz", workdir, 8, "--sigterm_at", "5"),
                           env=cpu_env(1), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-4000:]
  assert "SIGTERM received: train stopped at step 5 and saved a checkpoint there" in stopped.stderr
  assert _checkpoint_steps(workdir) == [5]
  resumed = _resume_to_8_and_compare(tmp_path, workdir, uninterrupted)
  assert set(range(6, 9)) <= set(_losses_by_step(resumed))


def test_four_devices_match_one(uninterrupted, tmp_path):
  _run(_worker_cmd(tmp_path / "out.npz", tmp_path / "wd", 8), cpu_env(4))
  four = np.load(tmp_path / "out.npz")
  assert int(four["n_devices"]) == 4
  # Same noise and data on any device count; only reduction order differs (float32 rounding).
  np.testing.assert_allclose(four["losses"], uninterrupted["losses"], rtol=1e-4)
  _assert_same_params(four, uninterrupted, rtol=1e-3, atol=1e-5)


def _two_processes(tmp_path, workdir, n_iters, *extra, timeout=300):
  """Runs the worker as 2 processes of 2 devices each; returns process 0's output."""
  port = _free_port()
  procs = [subprocess.Popen(
      _worker_cmd(tmp_path / f"out{i}.npz", workdir, n_iters, "--coordinator",
                  f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i), *extra),
      env=cpu_env(2), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    for p in procs:
      _, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, err[-4000:]
  finally:
    for p in procs:
      p.kill()
  return np.load(tmp_path / "out0.npz")


def test_two_processes_with_async_saves_at_every_step_finish_and_match_one_process(tmp_path):
  """Two processes of two devices match one process of four (same noise and data; reduction order
  differs). Both runs save asynchronously with snapshot and preemption checkpoints at every step, so
  both managers finalise the same step in their own threads at once (issue 16): without a barrier
  prefix per manager their barrier ids collide. Two repeated runs must each finish (a hang fails at
  the timeout), write every snapshot and end bit-identical."""
  runs = []
  for r in range(2):
    workdir = tmp_path / f"wd{r}"
    runs.append(_two_processes(tmp_path, workdir, 4, "--preemption_freq", "1", "--snapshot_freq",
                               "1", timeout=600))
    assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [1, 2, 3, 4]
    assert _checkpoint_steps(workdir) == [4]
  _assert_same_params(runs[1], runs[0])
  np.testing.assert_array_equal(runs[1]["losses"], runs[0]["losses"])
  _run(_worker_cmd(tmp_path / "single.npz", tmp_path / "wd_single", 4), cpu_env(4))
  single = np.load(tmp_path / "single.npz")
  assert int(runs[0]["n_devices"]) == 4 and int(single["n_devices"]) == 4
  np.testing.assert_allclose(runs[0]["losses"], single["losses"], rtol=1e-5)
  _assert_same_params(runs[0], single, rtol=1e-4, atol=1e-6)
