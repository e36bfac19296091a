"""Device mesh, shardings and multi-host setup for data-parallel training (no pmap).

Parameters are replicated and the batch is sharded over a 1-D mesh axis 'data' spanning every
device of every process. Each process feeds its slice of the global batch.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None) -> None:
  """Calls ``jax.distributed.initialize`` when flags or the environment ask for multi-host.

  Explicit arguments win; otherwise ``SCORE_SDE_COORDINATOR``/``SCORE_SDE_NUM_PROCESSES``/
  ``SCORE_SDE_PROCESS_ID`` are read. Cluster environments that JAX detects by itself (SLURM, TPU
  pods) are covered by ``SCORE_SDE_DISTRIBUTED=1``, which calls initialize() without arguments.
  """
  coordinator_address = coordinator_address or os.environ.get("SCORE_SDE_COORDINATOR")
  if coordinator_address:
    num_processes = num_processes or int(os.environ["SCORE_SDE_NUM_PROCESSES"])
    if process_id is None:
      process_id = int(os.environ["SCORE_SDE_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif os.environ.get("SCORE_SDE_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def data_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# A state initialiser runs once, its cost is its compilation: threefry and the initialisers'
# distributions for every parameter (117 threefry calls for the digits NCSN++). Compiled without
# LLVM's optimisations it compiles in a third of the time (10.7 -> 3.7 s, digits NCSN++ on this CPU)
# to the same values but for float rounding (1 ulp in normal draws where LLVM would fuse a
# multiply-add; tests/test_builders.py). Measured on CPU only: other backends keep their defaults.
_ONE_OFF_OPTIONS = {"xla_backend_optimization_level": 0}


def jit_initializer(fun, mesh: Mesh):
  """``jax.jit`` of a state initialiser ``fun(key)``, its output replicated over ``mesh``; on CPU
  compiled with _ONE_OFF_OPTIONS, but inside a trace (``jax.eval_shape`` of the state's shapes),
  where a jit with compiler options may not be nested, the plain jit."""
  plain = jax.jit(fun, out_shardings=replicated(mesh))
  if jax.default_backend() != "cpu":
    return plain
  one_off = jax.jit(fun, out_shardings=replicated(mesh), compiler_options=_ONE_OFF_OPTIONS)

  def init(key):
    tracing = isinstance(jnp.zeros(()), jax.core.Tracer)  # an op inside a trace gives a tracer
    return plain(key) if tracing else one_off(key)

  return init


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Shards axis ``batch_axis`` of an array over the data axis."""
  return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def split_over_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
  """Inside ``jit``: computes ``x`` [B, ...] (and, by propagation, the batched work that makes it)
  with its batch split over the data axis, when B divides evenly; otherwise leaves it. Without
  it, a function of replicated inputs (parameters, a key) runs whole on every device."""
  if mesh.size == 1 or x.shape[0] % mesh.size:
    return x
  return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))


def gathered(x: jax.Array, mesh: Mesh) -> jax.Array:
  """Inside ``jit``: ``x`` replicated on every device (of every process), so the host can read it."""
  if mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, replicated(mesh))


def check_batch_size(batch_size: int, field: str = "config.training.batch_size") -> None:
  """The global batch must split evenly over devices and processes."""
  n_dev = jax.device_count()
  if batch_size % n_dev:
    raise ValueError(f"{field}={batch_size} is not divisible by the {n_dev} devices; choose a "
                     f"multiple of {n_dev}.")


def global_array(local: np.ndarray, sharding: NamedSharding, batch_axis: int = 0) -> jax.Array:
  """Assembles the global array from this process's slice along ``batch_axis``."""
  shape = list(local.shape)
  shape[batch_axis] *= jax.process_count()
  return jax.make_array_from_process_local_data(sharding, local, tuple(shape))


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches ``name`` (no-op for one process).

  Used after compiling: processes compile at different speeds, and the first collective of a step
  would otherwise time out (gloo on CPU waits only 30 s) while another process still compiles.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # the coordination client has the barrier

  jax_distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
