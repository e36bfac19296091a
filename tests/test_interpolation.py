"""slerp/lerp identities and the encode-interpolate-decode path on an exact-score Gaussian."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.samplers import interpolation
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy


def test_slerp_endpoints_norm_and_angle(x64):
  z0 = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 5))
  z1 = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 5))
  alpha = jnp.linspace(0.0, 1.0, 7)
  path = interpolation.slerp(z0, z1, alpha)
  assert path.shape == (7, 4, 3, 5)
  np.testing.assert_allclose(path[0], z0, atol=1e-12)
  np.testing.assert_allclose(path[-1], z1, atol=1e-12)
  # For equal-norm endpoints slerp stays on the sphere and moves at constant angular speed.
  unit0 = z0 / jnp.linalg.norm(z0.reshape(4, -1), axis=-1)[:, None, None]
  unit1 = z1 / jnp.linalg.norm(z1.reshape(4, -1), axis=-1)[:, None, None]
  sphere = interpolation.slerp(unit0, unit1, alpha).reshape(7, 4, -1)
  np.testing.assert_allclose(jnp.linalg.norm(sphere, axis=-1), 1.0, rtol=1e-12)
  omega = np.arccos(np.sum(unit0.reshape(4, -1) * unit1.reshape(4, -1), -1))
  angle_from_start = np.arccos(np.clip(np.einsum("kbd,bd->kb", sphere, unit0.reshape(4, -1)), -1, 1))
  np.testing.assert_allclose(angle_from_start, np.asarray(alpha)[:, None] * omega[None], atol=1e-7)


def test_lerp_and_parallel_fallback(x64):
  z0 = jnp.ones((2, 3))
  alpha = jnp.array([0.0, 0.25, 1.0])
  np.testing.assert_allclose(interpolation.lerp(z0, 3 * z0, alpha)[1], 1.5 * z0)
  # Parallel latents: slerp falls back to lerp instead of dividing by sin(0).
  np.testing.assert_allclose(interpolation.slerp(z0, 3 * z0, alpha), interpolation.lerp(z0, 3 * z0, alpha),
                             rtol=1e-12)


@pytest.mark.slow
def test_interpolate_endpoints_reconstruct_inputs(x64):
  """α = 0 and 1 decode the encoded inputs: the round trip through the PF ODE at tight tolerance."""
  sde = sde_lib.VPSDE()
  gauss = toy.gaussian(jnp.array([1.0, -0.5]), jnp.array([[0.5, 0.2], [0.2, 0.3]]))
  x_a = gauss.sample(jax.random.PRNGKey(2), 3)
  x_b = gauss.sample(jax.random.PRNGKey(3), 3)
  path, info = interpolation.interpolate(gauss.score_fn(sde), sde, x_a, x_b, num_points=5,
                                         rtol=1e-7, atol=1e-7)
  assert path.shape == (5, 3, 2) and info["z"].shape == (5, 3, 2)
  np.testing.assert_allclose(path[0], x_a, atol=1e-4)
  np.testing.assert_allclose(path[-1], x_b, atol=1e-4)
  # For Gaussian data the PF-ODE map is affine, so the decoded path is the affine image of the latent
  # path: the midpoint of a lerp path decodes to the midpoint of the data.
  lerp_path, _ = interpolation.interpolate(gauss.score_fn(sde), sde, x_a, x_b, num_points=3,
                                           interpolant="lerp", rtol=1e-7, atol=1e-7)
  np.testing.assert_allclose(lerp_path[1], 0.5 * (x_a + x_b), atol=1e-4)


def test_bad_input_is_rejected():
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="Unknown interpolant"):
    interpolation.interpolate(lambda x, t: -x, sde, jnp.zeros((1, 2)), jnp.ones((1, 2)),
                              interpolant="cubic")
  with pytest.raises(ValueError, match="same shape"):
    interpolation.interpolate(lambda x, t: -x, sde, jnp.zeros((1, 2)), jnp.ones((2, 2)))
