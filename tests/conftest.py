"""Shared pytest fixtures."""
import jax
import pytest


@pytest.fixture
def x64():
  """Runs a test with 64-bit floats, for comparisons against closed forms."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
