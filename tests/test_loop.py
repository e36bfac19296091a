"""The training loop skeleton on a toy state: hook schedule, checkpoints, resume, non-finite stop."""
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import pytest
from flax import struct

from score_sde.experiment import loop
from score_sde.io import checkpointing, logging_utils


@struct.dataclass
class Counter:
  step: jax.Array
  total: jax.Array  # sum of the data seen


class Data:
  """Batches 1, 2, 3, ... from ``start`` (the loop resumes the data at the restored step)."""

  def __init__(self, start):
    self.next_value, self.closed = float(start + 1), False

  def __next__(self):
    value, self.next_value = self.next_value, self.next_value + 1
    return value

  def close(self):
    self.closed = True


def _trainer(events, opened, poison_at=None):
  def step(state, value):
    loss = jnp.where(state.step + 1 == (poison_at or -1), jnp.nan, value)
    return Counter(step=state.step + 1, total=state.total + value), {"loss": loss}

  def open_data(start):
    opened.append(Data(start))
    return opened[-1]

  init = lambda: Counter(step=jnp.zeros((), jnp.int32), total=jnp.zeros((), jnp.float32))
  return loop.Trainer(
      name="toy", init_state=init, abstract_state=checkpointing.abstract_like(jax.eval_shape(init)),
      step=jax.jit(step), open_data=open_data, next_args=lambda it: (jnp.float32(next(it)),),
      log_scalars=lambda s, m: {"toy_loss": float(m["loss"])},
      evaluate=lambda s, state: events.append(("eval", s)) or {"total": float(state.total)},
      after_snapshot=lambda s, state, writer: events.append(("snapshot", s)),
      nonfinite_advice="Lower the toy rate.")


SCHEDULE = loop.Schedule(n_iters=5, steps_per_call=1, examples_per_step=1, log_freq=2, eval_freq=3,
                         snapshot_freq=4, preemption_freq=1, eval_at_end=True)


def test_hooks_fire_on_schedule_and_a_rerun_resumes(tmp_path):
  events, opened = [], []
  state, report = loop.run(_trainer(events, opened), SCHEDULE, str(tmp_path))
  assert int(state.step) == 5 and float(state.total) == 1 + 2 + 3 + 4 + 5
  assert events == [("eval", 3), ("snapshot", 4), ("eval", 5), ("snapshot", 5)]
  assert report == {"total": 15.0} and opened[0].closed
  scalars = logging_utils.read_scalars(os.path.join(tmp_path, "tensorboard"))
  assert [s for s, _ in scalars["toy_loss"]] == [2, 4, 5]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]

  events.clear()
  state, _ = loop.run(_trainer(events, opened), loop.Schedule(**{**vars(SCHEDULE), "n_iters": 7}),
                      str(tmp_path))
  assert opened[1].next_value == 8  # the data resumed after step 5
  assert int(state.step) == 7 and float(state.total) == 28.0


def test_a_nan_loss_stops_and_names_the_last_checkpoint(tmp_path):
  events, opened = [], []
  schedule = loop.Schedule(**{**vars(SCHEDULE), "preemption_freq": 2})
  with pytest.raises(loop.NonFiniteLossError,
                     match="toy loss became nan between steps 2 and 3.*checkpoint is step 2.*toy rate"):
    loop.run(_trainer(events, opened, poison_at=3), schedule, str(tmp_path))
  assert opened[0].closed and events == []
  assert os.path.isdir(tmp_path / "checkpoints-meta" / "2")


def test_a_second_run_on_a_held_workdir_is_refused_and_nothing_is_touched(tmp_path):
  """Two trainings on one workdir: the second would clean up the first's in-progress saves."""
  from score_sde.experiment import train
  from score_sde.io import checkpointing
  from tests.helpers.tiny_config import tiny_config
  workdir = str(tmp_path / "run")
  with checkpointing.workdir_lock(workdir):
    holder = json.load(open(os.path.join(workdir, checkpointing.LOCK_FILE)))
    assert holder["pid"] == os.getpid()
    with pytest.raises(checkpointing.WorkdirLockedError,
                       match=rf"{workdir} is in use by another run \(.*\"pid\": {os.getpid()}"):
      with checkpointing.workdir_lock(workdir):
        pass
    config = tiny_config()
    config.training.n_iters = 2
    with pytest.raises(checkpointing.WorkdirLockedError, match="in use by another run"):
      train.train(config, workdir)
    assert sorted(os.listdir(workdir)) == [checkpointing.LOCK_FILE]  # no checkpoint folders made
  # Released: the lock file is emptied and a run proceeds.
  assert open(os.path.join(workdir, checkpointing.LOCK_FILE)).read() == ""
  with checkpointing.workdir_lock(workdir):
    pass


def _data_trainer(seen, positioned_by_step):
  """A toy trainer on the digits whose step sums the batch; ``seen`` records each batch."""
  from score_sde.io import datasets
  spec = datasets.DataSpec("digits", 8, 1)

  def open_data(start):
    return datasets.get_dataset(spec, batch_size=16, random_flip=True, uniform_dequantization=True,
                                process_index=0, process_count=1, shuffle_seed=5,
                                start_step=start if positioned_by_step else 0, num_workers=2)

  def next_args(it):
    seen.append(next(it))
    return (jnp.float32(seen[-1]["image"].sum()),)

  trainer = _trainer([], [])
  return loop.Trainer(**{**vars(trainer), "open_data": open_data, "next_args": next_args,
                         "evaluate": None, "after_snapshot": None})


def test_grain_resume_is_bit_exact(tmp_path):
  """The data state saved with a checkpoint, not the step, positions the resumed stream: the data
  is reopened at step 0 and still continues exactly where the interrupted run stopped."""
  schedule = loop.Schedule(**{**vars(SCHEDULE), "n_iters": 10, "eval_at_end": False})
  uninterrupted = []
  loop.run(_data_trainer(uninterrupted, True), schedule, str(tmp_path / "whole"))
  seen = []
  loop.run(_data_trainer(seen, False), loop.Schedule(**{**vars(schedule), "n_iters": 6}),
           str(tmp_path / "run"))
  record = tmp_path / "run" / "checkpoints-meta" / "6" / "data" / "process_0-of-1.json"
  assert json.loads(record.read_text()) == {"step": 6, "offset": 0, "pipeline": {"next_index": 6}}
  loop.run(_data_trainer(seen, False), schedule, str(tmp_path / "run"))
  assert len(seen) == len(uninterrupted) == 10
  for got, want in zip(seen, uninterrupted):
    assert got.keys() == want.keys()
    assert all(got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes()
               for k in got)


def test_a_checkpoint_without_data_state_resumes_the_data_from_its_step(tmp_path, caplog):
  """Workdirs written before the data state was kept: the step positions the data."""
  schedule = loop.Schedule(**{**vars(SCHEDULE), "n_iters": 8, "eval_at_end": False})
  uninterrupted, seen = [], []
  loop.run(_data_trainer(uninterrupted, True), schedule, str(tmp_path / "whole"))
  loop.run(_data_trainer(seen, True), loop.Schedule(**{**vars(schedule), "n_iters": 5}),
           str(tmp_path / "run"))
  shutil.rmtree(tmp_path / "run" / "checkpoints-meta" / "5" / "data")
  with caplog.at_level(logging.INFO, logger=loop.__name__):
    loop.run(_data_trainer(seen, True), schedule, str(tmp_path / "run"))
  assert "step 5 has no data state" in caplog.text
  assert all(a["image"].tobytes() == b["image"].tobytes() for a, b in zip(seen, uninterrupted))
  assert len(seen) == 8


def test_the_data_state_is_taken_when_the_save_starts(tmp_path):
  """An asynchronous save must not record batches drawn after it started."""
  from score_sde.io import datasets
  it = datasets.get_dataset(datasets.DataSpec("digits", 8, 1), batch_size=8, process_index=0,
                            process_count=1, num_workers=1)
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path))
  with it:
    for _ in range(3):
      next(it)
    ckpts.save(3, {"w": jnp.ones(3)}, snapshot=True, data=it)
    for _ in range(5):
      next(it)
    ckpts.wait_until_finished()
  ckpts.close()
  for sub in ("checkpoints", "checkpoints-meta"):
    record = tmp_path / sub / "3" / "data" / "process_0-of-1.json"
    assert json.loads(record.read_text())["step"] == 3
