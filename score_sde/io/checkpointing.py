"""Orbax checkpoints that survive preemption.

Two managers under the work directory, as in the reference layout:
- ``checkpoints/``: periodic snapshots (every ``snapshot_freq`` steps), all kept, used by eval mode;
- ``checkpoints-meta/``: the frequent preemption checkpoint, only the latest kept.
Saving is asynchronous (on one process and across several; each manager's barriers carry its own
prefix, `barrier_prefix`); orbax writes to a temporary directory and renames it when complete, so a
process killed mid-save leaves no checkpoint that could be restored half-written.

Every saved state is checked and recorded first: a state with a non-finite leaf is never saved
(`NonFiniteStateError`), and a checksum of each leaf (computed on the devices, one uint32 per leaf)
goes to ``<manager dir>-checksums/<step>.json``, written by process 0 before the save starts, so
every committed step has its record. A restore verifies the state (finite, checksums equal) and
falls back, newest first across both managers, past any checkpoint that is unreadable or fails the
verification, with one log line each; the broken folder is never deleted (a training run, which
would write that step again, renames it ``<step>.broken``).

A step holds two orbax items: ``default``, the state, and ``data``, the training input iterator's
grain state (one JSON file per process, grain's ``CheckpointHandler``), so that a resumed run reads
exactly the batches an uninterrupted one would have. Steps saved before the data state was kept
have ``default`` only.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)


def abstract_like(tree: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """ShapeDtypeStructs describing ``tree`` (restores in place of it), each with its leaf's sharding,
  else ``sharding``, else replicated over every device of every process. A restore target must
  name its devices: without them orbax places each array as it was saved and refuses a checkpoint
  written on another number of devices ("Topology mismatch")."""
  if sharding is None:
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("devices",)), PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, "sharding", None) or sharding), tree)


STATE_ITEM, DATA_ITEM = "default", "data"  # orbax items of a step; "default" as in older steps


def barrier_prefix(directory: str) -> str:
  """The orbax barrier-key prefix of the manager of ``directory``: its base name, the same on
  every host whatever the mount point."""
  return "score_sde_" + os.path.basename(os.path.normpath(directory))


def _manager(directory: str, max_to_keep: Optional[int], read_only: bool = False):
  # A writer names both items; a reader restores the state alone with plain `StandardRestore`
  # args (orbax's single-item mode), which reads steps with or without the data item.
  # Saves are asynchronous. Each manager finalises its saves in its own thread, where orbax meets
  # the other processes at barriers named without the manager's directory (e.g.
  # "ThreadSaveMultiHostValueHolder:set_value_start", "async_write_complete.<step dir name>"). At
  # a snapshot step both managers save the same step, so without a prefix per manager their two
  # threads wait on the same barrier ids at once: the coordination service refuses the second
  # ("FAILED_PRECONDITION: Barrier ... is already ongoing"), that save times out and the other
  # process hangs in wait_until_finished (reproduced: docs/reliability.md). The prefix (the
  # directory's base name, equal on every host) keeps each manager's barriers its own.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=True, read_only=read_only,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=barrier_prefix(directory)))
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=None if read_only else (STATE_ITEM, DATA_ITEM))


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


class NonFiniteStateError(FloatingPointError):
  """A state with a NaN or infinite leaf was not saved."""


class CheckpointError(RuntimeError):
  """No checkpoint could be restored and verified (or a requested one is broken)."""


# Odd multiplier of the position weights: every weight (2 i + 1) * _MIX is odd, hence invertible
# modulo 2^32, so any change of one 32-bit word changes the leaf's checksum.
_MIX = np.uint32(2654435761)


def _words(x: jax.Array) -> jax.Array:
  """The bits of ``x`` as a flat uint32 vector (8-byte types give two words per element)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.reshape(-1).astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  w = _words(x)
  weights = (2 * jnp.arange(w.size, dtype=jnp.uint32) + 1) * _MIX
  return jnp.sum(w * weights, dtype=jnp.uint32)


def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.inexact)


@jax.jit
def _leaf_fingerprint(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(``x`` finite (True if not floating), uint32 checksum of its bits), on the devices, the same
  on every process (the reductions are global). Compiled once per leaf shape and dtype: a state's
  hundreds of leaves have a few dozen (one jit over the whole tree compiled in 7 s for the digits
  DDPM++'s state, against 2.5 s for its 27 shapes; per call 7 vs 22 ms there, 208 vs 156 ms for
  an 80M-parameter state)."""
  finite = jnp.all(jnp.isfinite(x)) if _is_float(x) else jnp.asarray(True)
  return finite, _leaf_checksum(x)


def all_finite(tree: Any) -> bool:
  """Whether every floating leaf of ``tree`` is finite (NaN and infinities are not)."""
  return fingerprint(tree)[0]


def fingerprint(tree: Any) -> tuple[bool, dict]:
  """(all floating leaves finite, {leaf path: uint32 checksum of its bits})."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  prints = jax.device_get([_leaf_fingerprint(x) for _, x in leaves])
  return (all(bool(finite) for finite, _ in prints),
          {jax.tree_util.keystr(p): int(c) for (p, _), (_, c) in zip(leaves, prints)})


def _atomic_write_json(path: str, record: dict) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _first_line(e: BaseException, limit: int = 160) -> str:
  text = str(e).strip().splitlines()
  text = text[0] if text else ""
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def has_checkpoints(workdir: str) -> bool:
  """Whether ``workdir`` holds a step folder (usable or not) of `TrainCheckpoints`."""
  for sub in ("checkpoints", "checkpoints-meta"):
    directory = os.path.join(workdir, sub)
    if os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory)):
      return True
  return False


class TrainCheckpoints:
  """Snapshot and preemption checkpoints of a training run in ``workdir``."""

  def __init__(self, workdir: str, read_only: bool = False):
    self.workdir = workdir
    self.read_only = read_only
    self.snapshot_dir = os.path.join(workdir, "checkpoints")
    self.preemption_dir = os.path.join(workdir, "checkpoints-meta")
    self.snapshots = _manager(self.snapshot_dir, None, read_only)
    self.preemption = _manager(self.preemption_dir, 1, read_only)
    self._restored = None  # (manager, step) of the checkpoint `restore_latest` returned

  def latest_step(self) -> Optional[int]:
    steps = [s for s in (self.snapshots.latest_step(), self.preemption.latest_step()) if s is not None]
    return max(steps) if steps else None

  # --- checksums ---------------------------------------------------------------------------------

  @staticmethod
  def _checksum_dir(manager_dir: str) -> str:
    return f"{manager_dir}-checksums"

  def _checksum_path(self, manager_dir: str, step: int) -> str:
    return os.path.join(self._checksum_dir(manager_dir), f"{step}.json")

  def _write_checksums(self, manager, manager_dir: str, step: int, sums: dict) -> None:
    """Process 0 records ``sums`` of ``step`` and drops the records of steps the manager deleted."""
    if jax.process_index() != 0:
      return
    directory = self._checksum_dir(manager_dir)
    os.makedirs(directory, exist_ok=True)
    kept = set(manager.all_steps())
    for name in os.listdir(directory):
      stem = name[:-len(".json")] if name.endswith(".json") else ""
      if stem.isdigit() and int(stem) not in kept and int(stem) < step:
        os.remove(os.path.join(directory, name))
    _atomic_write_json(self._checksum_path(manager_dir, step),
                       {"step": step, "checksum": "uint32 sum of the bits, position-weighted",
                        "leaves": sums})

  # --- restore -----------------------------------------------------------------------------------

  def _verify(self, state: Any, manager_dir: str, step: int) -> Optional[str]:
    """None if ``state`` is finite and matches its recorded checksums, else the reason."""
    finite, sums = fingerprint(state)
    if not finite:
      return "non-finite values in the restored state"
    path = self._checksum_path(manager_dir, step)
    if not os.path.exists(path):
      log.info("Checkpoint %s has no checksum record (written before checksums were kept); "
               "checked for finite values only.", os.path.join(manager_dir, str(step)))
      return None
    try:
      recorded = json.load(open(path))["leaves"]
    except (OSError, ValueError, KeyError) as e:
      return f"unreadable checksum record {path} ({_first_line(e)})"
    common = [k for k in sums if k in recorded]
    if not common:
      return f"its checksum record {path} names none of the restored leaves"
    bad = [k for k in common if sums[k] != recorded[k]]
    if bad:
      return (f"checksum mismatch in {len(bad)} of {len(common)} leaves (first {bad[0]}): the "
              "data files changed after the save")
    return None

  def _try_restore(self, manager, manager_dir: str, step: int, target: Any):
    """(state, None) or (None, the reason it is unusable)."""
    folder = os.path.join(manager_dir, str(step))
    if os.path.isdir(folder) and not os.listdir(folder):
      return None, "empty step folder"
    try:
      args = ocp.args.StandardRestore(abstract_like(target))
      if self.read_only:
        state = manager.restore(step, args=args)
      else:
        state = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: args}))[STATE_ITEM]
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files
      return None, f"unreadable ({_first_line(e)})"
    reason = self._verify(state, manager_dir, step)
    return (None, reason) if reason else (state, None)

  def _candidates(self) -> list[tuple[int, Any, str]]:
    """(step, manager, its folder), newest first; the preemption copy of a step before its snapshot."""
    out = []
    for manager, directory in ((self.preemption, self.preemption_dir),
                               (self.snapshots, self.snapshot_dir)):
      manager.reload()
      steps = set(manager.all_steps())
      if os.path.isdir(directory):  # orbax may not list a step folder it cannot parse
        steps |= {int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n))}
      out += [(step, manager, directory) for step in steps]
    order = {id(self.preemption): 0, id(self.snapshots): 1}
    return sorted(out, key=lambda c: (-c[0], order[id(c[1])]))

  def _set_aside(self, manager_dir: str, step: int) -> str:
    """Renames a broken step folder (and its checksum record) out of orbax's sight, so that the
    run resuming before it can save that step again; nothing is deleted. Process 0 renames."""
    folder = os.path.join(manager_dir, str(step))
    target = f"{folder}.broken"
    n = 1
    while os.path.exists(target):
      n += 1
      target = f"{folder}.broken{n}"
    if jax.process_index() == 0:
      os.rename(folder, target)
      record = self._checksum_path(manager_dir, step)
      if os.path.exists(record):
        os.rename(record, f"{record[:-len('.json')]}{target[len(folder):]}.json")
    return target

  def restore_latest(self, target: Any) -> Optional[Any]:
    """Restores the newest usable checkpoint into the structure/shardings of ``target``; None if
    there is no checkpoint at all.

    Steps are tried newest first across both managers; one that is unreadable (truncated or
    missing files, an empty folder) or fails verification (non-finite values, a checksum
    mismatch) is skipped with one log line naming the folder and the reason. A writable
    `TrainCheckpoints` (a training run) renames a skipped folder to ``<step>.broken`` so that the
    step can be saved again; a read-only one leaves it. Raises `CheckpointError` naming the
    folders if no checkpoint is usable.
    """
    skipped = []
    for step, manager, directory in self._candidates():
      state, reason = self._try_restore(manager, directory, step, target)
      if state is None:
        skipped.append((directory, step, reason))
        continue
      folder = os.path.join(directory, str(step))
      for skipped_dir, skipped_step, why in skipped:
        kept = ("left in place" if self.read_only
                else f"kept as {self._set_aside(skipped_dir, skipped_step)}")
        log.warning("Skipping checkpoint %s: %s; %s; falling back to %s.",
                    os.path.join(skipped_dir, str(skipped_step)), why, kept, folder)
      if skipped and not self.read_only:
        _sync("score_sde_checkpoints_set_aside")
        self.preemption.reload()
        self.snapshots.reload()
      self._restored = (manager, step)
      return state
    if not skipped:
      return None
    for directory, step, why in skipped:
      log.warning("Skipping checkpoint %s: %s.", os.path.join(directory, str(step)), why)
    folders = ", ".join(os.path.join(d, str(s)) for d, s, _ in skipped)
    raise CheckpointError(f"No usable checkpoint in {self.workdir}: {folders} are unreadable or "
                          "fail verification (see the log lines above); they were left in place. "
                          "Move them away to start from scratch, or point --workdir elsewhere.")

  def restore_data(self, iterator: grain.DatasetIterator) -> bool:
    """Sets ``iterator`` to the data state saved with the step `restore_latest` returned (by a
    writer). False, leaving it as it was, when that step has none: saved before data states were
    kept, without an iterator, or by a different number of processes."""
    if self._restored is None or self.read_only:
      return False
    manager, step = self._restored
    folder = os.path.join(manager.directory, str(step), DATA_ITEM)
    if not os.path.isdir(folder):
      return False
    try:
      manager.restore(step, args=ocp.args.Composite(
          **{DATA_ITEM: grain.checkpoint.CheckpointRestore(iterator)}))
    except Exception as e:  # e.g. no file of this process: another process count wrote it
      log.warning("Data state %s not restored (%s); the data resumes from the step instead.",
                  folder, _first_line(e))
      return False
    return True

  def restore_snapshot(self, step: int, target: Any) -> Any:
    """Snapshot ``step``, verified; `CheckpointError` (one line) if it is unreadable or broken."""
    state, reason = self._try_restore(self.snapshots, self.snapshot_dir, step, target)
    if state is None:
      raise CheckpointError(f"Checkpoint {os.path.join(self.snapshot_dir, str(step))} is "
                            f"unusable: {reason}.")
    return state

  def save(self, step: int, state: Any, *, snapshot: bool,
           data: Optional[grain.DatasetIterator] = None) -> None:
    """Starts an asynchronous save to the preemption (and, if ``snapshot``, snapshot) manager,
    after recording the state's checksums; `NonFiniteStateError` (nothing saved) if a floating
    leaf is not finite. The state of the ``data`` iterator, taken now, is saved with it."""
    finite, sums = fingerprint(state)
    if not finite:
      raise NonFiniteStateError(f"The state at step {step} has non-finite values; not saved.")
    targets = [(self.preemption, self.preemption_dir)]
    if snapshot:
      targets.append((self.snapshots, self.snapshot_dir))
    for manager, directory in targets:
      manager.wait_until_finished()  # orbax would wait too; the record must follow the last save
      self._write_checksums(manager, directory, step, sums)
    _sync(f"score_sde_checksums_{step}")
    items = {STATE_ITEM: ocp.args.StandardSave(state)}
    if data is not None:
      items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data)
    for manager, _ in targets:
      manager.save(step, args=ocp.args.Composite(**items), force=True)
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
