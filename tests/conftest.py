"""Shared pytest fixtures."""
import os
import tempfile

# The suite is compile-bound (hundreds of tiny programs, each run a few times): XLA:CPU compiles
# them about twice as fast at LLVM optimisation level 0 with the classic loop emitters, for the
# same HLO (docs/testing.md, "Compile flags"). Set before JAX creates its CPU client; inherited by
# the subprocesses tests start. An XLA_FLAGS that already picks an optimisation level is kept as is.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

# One persistent compilation cache for the whole run, shared with subprocesses that tests start,
# so each model/step is compiled once per CI run.
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               os.path.join(tempfile.gettempdir(), "score_sde_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def x64():
  """Runs a test with 64-bit floats, for comparisons against closed forms."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
