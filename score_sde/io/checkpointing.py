"""Orbax checkpoints that survive preemption.

Two managers under the work directory, as in the reference layout:
- ``checkpoints/``: periodic snapshots (every ``snapshot_freq`` steps), all kept, used by eval mode;
- ``checkpoints-meta/``: the frequent preemption checkpoint, only the latest kept.
Saving is asynchronous on a single process (synchronous across several); orbax writes to a temporary directory and renames it when complete, so a
process killed mid-save leaves no checkpoint that could be restored half-written.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator, Optional

import jax
import orbax.checkpoint as ocp


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs, with shardings, describing ``tree`` (restores in place of it)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _manager(directory: str, max_to_keep: Optional[int], read_only: bool = False):
  # Asynchronous on one process. With several processes, orbax 0.12's async finalisation was seen
  # to hang process 0 in wait_until_finished while the others shut down, so saves are synchronous.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         cleanup_tmp_directories=not read_only,
                                         enable_async_checkpointing=jax.process_count() == 1,
                                         read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
  """Another run holds the work directory."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive lock on ``workdir`` (``workdir/.lock``) for the body.

  A second training run on the same directory would clean up the first one's in-progress saves;
  it is refused instead, with a message naming the holder (host, pid, command). The lock is an
  ``flock`` on an open file, so it is released by the kernel when the holder dies, however it
  ends. Only process 0 of a multi-host run takes it: the run's other processes are its own.
  """
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "an unknown process"
      raise WorkdirLockedError(f"{workdir} is in use by another run ({holder}); wait for it to "
                               "finish, stop it, or choose another --workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                        "command": " ".join(sys.argv), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)


# Called as `after_save_started(step, checkpoints)` once `TrainCheckpoints.save` has started the
# writes of `step` and before they are waited for; None in normal runs. tests/helpers/train_worker.py
# sets it to kill a run at a known point of a save.
after_save_started: Optional[Callable[[int, "TrainCheckpoints"], None]] = None


class TrainCheckpoints:
  """Snapshot and preemption checkpoints of a training run in ``workdir``."""

  def __init__(self, workdir: str, read_only: bool = False):
    self.snapshot_dir = os.path.join(workdir, "checkpoints")
    self.preemption_dir = os.path.join(workdir, "checkpoints-meta")
    self.snapshots = _manager(self.snapshot_dir, None, read_only)
    self.preemption = _manager(self.preemption_dir, 1, read_only)

  def latest_step(self) -> Optional[int]:
    steps = [s for s in (self.snapshots.latest_step(), self.preemption.latest_step()) if s is not None]
    return max(steps) if steps else None

  def restore_latest(self, target: Any) -> Optional[Any]:
    """Restores the newest checkpoint into the structure/shardings of ``target``, or None."""
    step = self.latest_step()
    if step is None:
      return None
    manager = self.preemption if self.preemption.latest_step() == step else self.snapshots
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def restore_snapshot(self, step: int, target: Any) -> Any:
    return self.snapshots.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def save(self, step: int, state: Any, *, snapshot: bool) -> None:
    """Starts an asynchronous save to the preemption (and, if ``snapshot``, snapshot) manager."""
    self.preemption.save(step, args=ocp.args.StandardSave(state), force=True)
    if snapshot:
      self.snapshots.save(step, args=ocp.args.StandardSave(state), force=True)
    if after_save_started is not None:
      after_save_started(step, self)

  def wait_until_finished(self) -> None:
    self.preemption.wait_until_finished()
    self.snapshots.wait_until_finished()

  def close(self) -> None:
    self.preemption.close()
    self.snapshots.close()

  def wait_for_snapshot(self, step: int, timeout_s: float, poll_s: float = 5.0) -> bool:
    """Polls until snapshot ``step`` exists (a trainer may still be writing it)."""
    deadline = time.monotonic() + timeout_s
    while True:
      self.snapshots.reload()
      if step in self.snapshots.all_steps():
        return True
      if time.monotonic() >= deadline:
        return False
      time.sleep(poll_s)
