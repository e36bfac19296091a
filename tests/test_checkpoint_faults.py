"""Faults in checkpoints (issue 16, rows 2, 3, 3b of docs/reliability.md): fault injection on real
orbax checkpoints, of the toy loop of test_loop.py (fast) and of a tiny training run (slow).

Faults: a truncated data file, 8 flipped bytes inside a data file, a deleted ``_METADATA``, an empty
step folder. Each falls back to the newest intact checkpoint with one log line naming the folder,
and nothing is deleted."""
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.experiment import loop, training
from score_sde.io import checkpointing
from tests.test_loop import SCHEDULE, Counter, _trainer

LOGGER = "score_sde.io.checkpointing"


def _data_files(step_dir):
  """The array data files of an orbax step folder, largest first."""
  files = []
  for root, _, names in os.walk(step_dir):
    if os.path.basename(root) == "d":
      files += [os.path.join(root, n) for n in names]
  assert files, f"no data files under {step_dir}"
  return sorted(files, key=os.path.getsize, reverse=True)


def truncate(step_dir):
  """Truncates every data file to half its size (which one holds a given leaf is unknown)."""
  for path in _data_files(step_dir):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def flip_bytes(step_dir):
  """Flips 8 bytes in the middle of every data file (the one holding a given leaf is unknown)."""
  for path in _data_files(step_dir):
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 2
    for i in range(mid, min(mid + 8, len(data))):
      data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, "default", "_METADATA"))


def empty_folder(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


FAULTS = {"truncated": truncate, "flipped": flip_bytes, "no_metadata": delete_metadata,
          "empty": empty_folder}


def _toy_target():
  init = lambda: Counter(step=jnp.zeros((), jnp.int32), total=jnp.zeros((), jnp.float32))
  return checkpointing.abstract_like(jax.eval_shape(init))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """The toy loop run to step 5, keeping snapshot 4 (checkpoints/4) and the preemption checkpoint
  5 (checkpoints-meta/5); the final snapshot 5 is removed so that 4 is the fallback."""
  workdir = tmp_path_factory.mktemp("toy") / "wd"
  loop.run(_trainer([], []), SCHEDULE, str(workdir))
  shutil.rmtree(workdir / "checkpoints" / "5")  # the final snapshot: keep 4 as the fallback
  os.remove(workdir / "checkpoints-checksums" / "5.json")
  return workdir


def _copy(toy_run, tmp_path):
  workdir = tmp_path / "wd"
  shutil.copytree(toy_run, workdir)
  return workdir


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_broken_newest_checkpoint_falls_back_with_one_line(toy_run, tmp_path, caplog, fault):
  workdir = _copy(toy_run, tmp_path)
  broken = workdir / "checkpoints-meta" / "5"
  FAULTS[fault](broken)
  ckpts = checkpointing.TrainCheckpoints(str(workdir), read_only=True)
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    state = ckpts.restore_latest(_toy_target())
  ckpts.close()
  assert int(state.step) == 4 and float(state.total) == 1 + 2 + 3 + 4
  lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
  assert len(lines) == 1 and f"Skipping checkpoint {broken}:" in lines[0], lines
  assert f"falling back to {workdir / 'checkpoints' / '4'}" in lines[0]
  assert os.path.isdir(broken)  # read-only: left in place


def test_training_resumes_from_the_intact_snapshot_and_keeps_the_broken_one(toy_run, tmp_path,
                                                                            caplog):
  workdir = _copy(toy_run, tmp_path)
  truncate(workdir / "checkpoints-meta" / "5")
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    state, _ = loop.run(_trainer([], []), loop.Schedule(**{**vars(SCHEDULE), "n_iters": 6}),
                        str(workdir))
  assert int(state.step) == 6 and float(state.total) == 21.0  # steps 5 and 6 trained again
  assert "kept as" in caplog.text
  assert os.path.isdir(workdir / "checkpoints-meta" / "5.broken")  # renamed, never deleted
  assert sorted(os.listdir(workdir / "checkpoints-meta")) == ["5.broken", "6"]


def test_no_usable_checkpoint_is_an_error_naming_the_folders(toy_run, tmp_path):
  workdir = _copy(toy_run, tmp_path)
  empty_folder(workdir / "checkpoints-meta" / "5")
  delete_metadata(workdir / "checkpoints" / "4")
  ckpts = checkpointing.TrainCheckpoints(str(workdir))
  with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints-meta/5, .*checkpoints/4 "):
    ckpts.restore_latest(_toy_target())
  ckpts.close()
  assert os.path.isdir(workdir / "checkpoints-meta" / "5")  # nothing renamed when none is usable
  with pytest.raises(checkpointing.CheckpointError, match=r"^Checkpoint .*checkpoints/4 is unusable"):
    checkpointing.TrainCheckpoints(str(workdir), read_only=True).restore_snapshot(4, _toy_target())


def test_each_manager_saves_asynchronously_under_its_own_barrier_prefix(tmp_path):
  """Both managers save the same step at a snapshot step; across processes their orbax barriers
  must not share ids (issue 16: the multi-process async hang). The prefix is the directory's base
  name, so it is the same on every host whatever the mount point."""
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path / "wd"))
  prefixes = {m._multiprocessing_options.barrier_sync_key_prefix  # pylint: disable=protected-access
              for m in (ckpts.snapshots, ckpts.preemption)}
  assert prefixes == {"score_sde_checkpoints", "score_sde_checkpoints-meta"}
  assert ckpts.snapshots._options.enable_async_checkpointing  # pylint: disable=protected-access
  assert ckpts.preemption._options.enable_async_checkpointing  # pylint: disable=protected-access
  assert checkpointing.barrier_prefix("/mnt/a/run/checkpoints/") == \
      checkpointing.barrier_prefix("/other/mount/run/checkpoints")
  ckpts.close()


def test_a_non_finite_state_is_never_saved(tmp_path):
  """A finite loss with a NaN in the state (no 'finite' metric): the save is refused."""
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path))
  bad = Counter(step=jnp.asarray(3, jnp.int32), total=jnp.asarray(np.nan, jnp.float32))
  with pytest.raises(checkpointing.NonFiniteStateError):
    ckpts.save(3, bad, snapshot=True)
  ckpts.wait_until_finished()
  assert ckpts.latest_step() is None
  ckpts.close()


def test_the_train_step_finite_check_finds_one_bad_element_in_any_leaf():
  """`training.tree_all_finite`, the train step's 'finite' metric: one NaN or inf anywhere in a
  float32 or bfloat16 leaf, or in the loss, makes it False; integer leaves are ignored."""
  tree = {"w": jnp.ones((3, 4)), "b": jnp.zeros(5, jnp.bfloat16), "step": jnp.asarray(7)}
  check = jax.jit(training.tree_all_finite)
  assert bool(check(jnp.asarray(0.5), tree))
  for leaf, index in (("w", (2, 3)), ("b", 0)):
    for bad in (np.nan, np.inf, -np.inf):
      broken = {**tree, leaf: tree[leaf].at[index].set(bad)}
      assert not bool(check(jnp.asarray(0.5), broken)), (leaf, bad)
  assert not bool(check(jnp.asarray(np.nan), tree))
  assert bool(check({"step": jnp.asarray(1)}))  # nothing floating: nothing to fail


def test_silently_flipped_array_bytes_fail_the_checksum(tmp_path, caplog):
  """8 bytes flipped inside a stored array restore without error (the values change); the
  recorded checksum catches it and the restore falls back to the older checkpoint."""
  ckpts = checkpointing.TrainCheckpoints(str(tmp_path))
  noise = np.random.RandomState(0).randn(1024).astype(np.float32)
  state = lambda s: {"step": jnp.asarray(s, jnp.int32), "w": jnp.asarray(noise * s)}
  ckpts.save(1, state(1), snapshot=True)
  ckpts.save(2, state(2), snapshot=False)
  ckpts.wait_until_finished()
  ckpts.close()
  step_dir = tmp_path / "checkpoints-meta" / "2"
  path = _data_files(step_dir)[0]  # the array's chunk (random values: barely compressed)
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 2, len(data) // 2 + 8):
    data[i] ^= 0x5A
  open(path, "wb").write(bytes(data))
  target = checkpointing.abstract_like(state(0))
  reader = checkpointing.TrainCheckpoints(str(tmp_path), read_only=True)
  # orbax alone restores the corrupted values without complaint:
  raw = reader.preemption.restore(2, args=checkpointing.ocp.args.StandardRestore(target))
  assert not np.array_equal(np.asarray(raw["w"]), np.asarray(state(2)["w"]))
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    restored = reader.restore_latest(target)
  reader.close()
  assert int(restored["step"]) == 1
  np.testing.assert_array_equal(restored["w"], state(1)["w"])
  assert f"Skipping checkpoint {step_dir}: checksum mismatch in 1 of 2 leaves (first ['w'])" \
      in caplog.text


# --- a tiny real training run (slow: each training call compiles the step, ~30 s on a CPU) ------

def _tiny(n_iters, **overrides):
  from tests.helpers.tiny_config import tiny_config
  config = tiny_config()
  config.training.n_iters = n_iters
  config.training.snapshot_freq = 2
  for field, value in overrides.items():
    section, name = field.split("__")
    config[section][name] = value
  return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A tiny DDPM++ trained 4 steps: snapshots 2 and 4, preemption checkpoint 4, config.json."""
  from score_sde.experiment import train
  workdir = tmp_path_factory.mktemp("tiny") / "wd"
  train.train(_tiny(4), str(workdir))
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_sampling_restore_falls_back_past_broken_real_checkpoints(tiny_run, tmp_path, caplog, fault):
  """Both copies of step 4 broken: the EMA parameters of snapshot 2 are restored, as orbax would
  otherwise fail with a long traceback or (flipped bytes) return corrupted parameters."""
  from score_sde.experiment import builders, restore
  workdir = _copy(tiny_run, tmp_path)
  for broken in (workdir / "checkpoints-meta" / "4", workdir / "checkpoints" / "4"):
    FAULTS[fault](broken)
  exp = builders.build_experiment(_tiny(4))
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    step, params = restore.latest_params(exp, str(workdir))
  assert step == 2 and checkpointing.all_finite(params)
  lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
  assert len(lines) == 2 and all("Skipping checkpoint" in line for line in lines), lines
  assert os.path.isdir(workdir / "checkpoints-meta" / "4")  # read-only: nothing renamed


@pytest.mark.slow
def test_a_divergent_update_is_never_saved_and_the_resume_is_clean(tiny_run, tmp_path):
  """lr=1e6 from step 4: the update leaves huge but finite parameters whose loss is NaN. Today's
  check of the loss before the update saved it as "last good"; now the state is verified before
  each save, nothing poisoned is written, the stop names step 4, and a sane resume trains on."""
  from score_sde.experiment import train
  workdir = _copy(tiny_run, tmp_path)
  bad = _tiny(8, optim__lr=1e6, optim__warmup=0, training__snapshot_freq_for_preemption=1)
  with pytest.raises(loop.NonFiniteLossError, match=r"last good checkpoint is step 4 in"):
    train.train(bad, str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints-meta")) == ["4"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  state = train.train(_tiny(6), str(workdir))
  assert int(state.step) == 6 and checkpointing.all_finite(state)


@pytest.mark.slow
@pytest.mark.parametrize("field,value", [("training__sde", "subvpsde"), ("model__nf", 16),
                                         ("training__continuous", False)])
def test_resuming_with_another_model_or_sde_is_refused(tiny_run, tmp_path, field, value):
  from score_sde.experiment import train
  workdir = _copy(tiny_run, tmp_path)
  before = sorted(os.listdir(workdir))
  name = field.replace("__", ".")
  with pytest.raises(train.ConfigChangedError, match=rf"refused changes: config\.{name}: "):
    train.train(_tiny(6, **{field: value}), str(workdir))
  assert sorted(os.listdir(workdir)) == before


@pytest.mark.slow
def test_turning_grad_clipping_off_on_resume_rebuilds_the_optimizer_state(tiny_run, tmp_path,
                                                                           caplog):
  from score_sde.experiment import train
  workdir = _copy(tiny_run, tmp_path)
  with caplog.at_level(logging.WARNING):
    state = train.train(_tiny(6, optim__grad_clip=-1.0, training__log_freq=3), str(workdir))
  assert int(state.step) == 6 and checkpointing.all_finite(state)
  assert "config.optim.grad_clip: 1.0 -> -1.0" in caplog.text
  assert "config.training.log_freq: 1 -> 3" in caplog.text
  assert "new optimiser state" in caplog.text
  assert '"grad_clip": -1.0' in open(workdir / "config.json").read()  # the record follows
