"""The training loop shared by score-model and classifier training: one compiled step, a Python loop.

It resumes from the newest usable checkpoint, logs to TensorBoard, runs a periodic evaluation hook,
writes snapshot and preemption checkpoints and stops on a non-finite loss or state. Only verified
states are saved: finite (the step's ``metrics['finite']``, and `checkpointing` refuses any
non-finite leaf) and, with ``Trainer.verify``, giving a finite loss themselves, so that an update
that blows the parameters up to huge but finite values is not saved and named the last good one.
A trainer supplies only its state, its step and its hooks (`Trainer`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
from typing import Any, Callable, Iterator, Optional

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from score_sde.experiment import distributed
from score_sde.io import checkpointing, logging_utils

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss or state (nothing of it was saved)."""


class Preempted(RuntimeError):
  """Training stopped on SIGTERM or SIGINT after saving a checkpoint at the step it had reached."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum  # the shell's convention for a signalled process


# Called as `after_step(step)` after each call of the compiled step; None in normal runs.
# tests/helpers/train_worker.py sets it to signal a run at a known step.
after_step: Optional[Callable[[int], None]] = None


@contextlib.contextmanager
def _stop_requests() -> Iterator[list]:
  """Records SIGTERM / SIGINT in the yielded list instead of dying mid-step (main thread only;
  elsewhere the list stays empty). The previous handlers are restored afterwards."""
  received: list = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return
  signals = (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.getsignal(s) for s in signals}
  for s in signals:
    signal.signal(s, lambda signum, frame: received.append(signum))
  try:
    yield received
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def _agreed_stop(received: list) -> int:
  """The signal to stop on, 0 for none; every process of a multi-host run gets the same answer
  (one small all-gather per loop iteration), so all stop at the same step."""
  local = received[0] if received else 0
  if jax.process_count() == 1:
    return local
  return int(np.max(multihost_utils.process_allgather(np.int32(local))))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop logs, evaluates and checkpoints; a frequency of 0 never fires."""
  n_iters: int
  steps_per_call: int  # optimiser steps of one call of the compiled step
  examples_per_step: int
  log_freq: int
  eval_freq: int
  snapshot_freq: int
  preemption_freq: int = 0  # checkpoints to resume from, kept only until the next one
  eval_at_end: bool = False


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What one kind of training supplies to `run`.

  ``open_data(start_step)`` opens the training iterator (closed by the loop); ``next_args(it)``
  turns it into the step's arguments after the state. A grain ``DatasetIterator`` has its state
  saved with each checkpoint and restored on resume. ``step(state, *args) -> (state, metrics)``
  is jitted, metrics holding 'loss' (scalar or [steps_per_call]). The hooks get the step reached;
  ``evaluate`` returns scalars that are logged and returned by `run` as the last report.

  Optional metrics 'finite' (bool, or [steps_per_call]): the updated state is finite, one fused
  reduction in the step. ``verify(state, *args)`` (jitted, a bool scalar) is called before each
  save: whether the state about to be saved is sound (e.g. its loss on the step's batch is
  finite); the state is not saved otherwise. ``before_restore()`` runs under the work directory's
  lock before the restore (e.g. to record the config); ``after_restore(state)`` maps a restored
  state to the one to train on (e.g. rebuilds an optimiser state).
  """
  name: str  # progress bar and messages
  init_state: Callable[[], Any]
  abstract_state: Any
  step: Any  # a jitted function
  open_data: Callable[[int], Any]
  next_args: Callable[[Iterator], tuple]
  log_scalars: Callable[[int, dict], dict]
  nonfinite_advice: str
  evaluate: Callable[[int, Any], dict] | None = None
  after_snapshot: Callable[[int, Any, logging_utils.MetricWriter], None] | None = None
  verify: Any = None  # a jitted function, or None
  before_restore: Callable[[], None] | None = None
  after_restore: Callable[[Any], Any] | None = None


def _crossed(prev_step: int, step: int, freq: int) -> bool:
  return freq > 0 and step // freq > prev_step // freq


def _last_good(last_saved, workdir: str) -> str:
  return (f"the last good checkpoint is step {last_saved} in {workdir}" if last_saved
          else "no checkpoint was written yet")


def _check_finite(losses: np.ndarray, finite, prev: int, step: int, last_saved, workdir: str,
                  trainer: Trainer) -> None:
  """Raises `NonFiniteLossError` if a loss of the call or the updated state is not finite."""
  losses_ok = bool(np.all(np.isfinite(losses)))
  if losses_ok and (finite is None or bool(np.all(np.asarray(finite)))):
    return
  what = (f"loss became {losses[~np.isfinite(losses)][0]}" if not losses_ok
          else f"parameters became non-finite (loss {losses[-1]:.4g})")
  raise NonFiniteLossError(
      f"The {trainer.name} {what} between steps {prev} and {step}; training stopped and "
      f"{_last_good(last_saved, workdir)}. {trainer.nonfinite_advice}")


def _save(trainer: Trainer, ckpts, state, args, data, step: int, snapshot: bool, last_saved,
          workdir: str) -> None:
  """Saves ``state`` if it passes ``trainer.verify`` and is finite, else stops training."""
  reason = None
  if trainer.verify is not None and not bool(np.asarray(trainer.verify(state, *args))):
    reason = "gives a non-finite loss on its batch (an update blew the parameters up)"
  else:
    try:
      ckpts.save(step, state, snapshot=snapshot,
                 data=data if isinstance(data, grain.DatasetIterator) else None)
      return
    except checkpointing.NonFiniteStateError:
      reason = "has non-finite values"
  ckpts.wait_until_finished()
  raise NonFiniteLossError(
      f"The {trainer.name} state after step {step} {reason}; it was not saved, training stopped "
      f"and {_last_good(last_saved, workdir)}. {trainer.nonfinite_advice}")


def run(trainer: Trainer, schedule: Schedule, workdir: str) -> tuple[Any, dict]:
  """Trains to ``schedule.n_iters`` from the newest checkpoint in ``workdir`` (or a fresh state),
  holding the work directory's lock (a second run on it is refused).

  Returns the final state and the last report of ``trainer.evaluate`` ({} if none ran).
  """
  with checkpointing.workdir_lock(workdir), _stop_requests() as received:
    return _run_locked(trainer, schedule, workdir, received)


def _run_locked(trainer: Trainer, schedule: Schedule, workdir: str,
                received: list) -> tuple[Any, dict]:
  writer = logging_utils.MetricWriter(os.path.join(workdir, "tensorboard"))
  ckpts = checkpointing.TrainCheckpoints(workdir)
  if trainer.before_restore is not None:
    trainer.before_restore()
  state = ckpts.restore_latest(trainer.abstract_state)
  if state is None:
    state = trainer.init_state()
  elif trainer.after_restore is not None:
    state = trainer.after_restore(state)
  step = int(state.step)
  if step:
    log.info("Resuming %s from step %d in %s", trainer.name, step, workdir)
  data = trainer.open_data(step)
  if step and isinstance(data, grain.DatasetIterator) and not ckpts.restore_data(data):
    log.info("Checkpoint of step %d has no data state: the data resumes from the step.", step)
  bar = logging_utils.ProgressBar(total=schedule.n_iters, initial=step, desc=trainer.name,
                                  examples_per_step=schedule.examples_per_step)
  try:
    state, step, report = _steps(trainer, schedule, state, step, data, writer, ckpts, bar, workdir,
                                 received)
  finally:
    bar.close()
    ckpts.wait_until_finished()
    ckpts.close()
    writer.close()
    data.close()
  if jax.process_index() == 0:
    log.info("%s finished at step %d", trainer.name, step)
  return state, report


def _steps(trainer, schedule, state, step, data, writer, ckpts, bar, workdir, received):
  """The loop body of `run`: (state, step, last report) at schedule.n_iters.

  On SIGTERM / SIGINT (``received``) it saves a preemption checkpoint at the step boundary it has
  reached, waits for the save and raises `Preempted`.
  """
  last_saved = step or None
  report, step_fn = {}, None
  while step < schedule.n_iters:
    args = trainer.next_args(data)
    if step_fn is None:
      step_fn = trainer.step.lower(state, *args).compile()
      distributed.barrier(f"score_sde_{trainer.name}_step_compiled")
    state, metrics = step_fn(state, *args)
    losses = np.asarray(metrics["loss"]).reshape(-1)
    finite = metrics.get("finite")
    prev, step = step, step + schedule.steps_per_call
    if not (np.all(np.isfinite(losses)) and (finite is None or np.all(np.asarray(finite)))):
      ckpts.wait_until_finished()
      _check_finite(losses, finite, prev, step, last_saved, workdir, trainer)
    bar.update(schedule.steps_per_call, loss=float(losses[-1]))
    final = step >= schedule.n_iters
    if _crossed(prev, step, schedule.log_freq) or final:
      writer.scalars(step, trainer.log_scalars(step, metrics))
    if trainer.evaluate and (_crossed(prev, step, schedule.eval_freq)
                             or (final and schedule.eval_at_end)):
      report = trainer.evaluate(step, state)
      writer.scalars(step, report)
    snapshot = _crossed(prev, step, schedule.snapshot_freq) or final
    if snapshot or _crossed(prev, step, schedule.preemption_freq):
      _save(trainer, ckpts, state, args, data, step, snapshot, last_saved, workdir)
      last_saved = step
      if snapshot and trainer.after_snapshot:
        trainer.after_snapshot(step, state, writer)
    if after_step is not None:
      after_step(step)
    signum = _agreed_stop(received)
    if signum and not final:
      if last_saved != step:
        _save(trainer, ckpts, state, args, data, step, False, last_saved, workdir)
      ckpts.wait_until_finished()
      raise Preempted(f"{signal.Signals(signum).name} received: {trainer.name} stopped at step "
                      f"{step} and saved a checkpoint there in {workdir}; run the same command "
                      "again to resume.", signum)
  return state, step, report
