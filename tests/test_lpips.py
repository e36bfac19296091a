"""LPIPS-VGG v0.1 (score_sde/metrics/lpips.py): parity with a torch reference on a reduced-width net,
exact identity and symmetry, and the local-file rules (missing file, hash, shapes)."""
import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.io import torch_pickle
from score_sde.metrics import lpips
from tests.helpers import torch_save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "lpips_small")
VGG_PATH, LIN_PATH = FIXTURE + "_vgg.pth", FIXTURE + "_lin.pth"
# torchvision's VGG16 stages, every width divided by 8 (how the fixture was made: tests/fixtures/README.md).
SMALL_STAGES = tuple(tuple(w // 8 for w in stage) for stage in lpips.VGG16_STAGES)


@pytest.fixture(scope="module")
def weights():
  return lpips.load_lpips(VGG_PATH, LIN_PATH, expected_sha256=None, stages=SMALL_STAGES)


@pytest.fixture(scope="module")
def distance():
  return jax.jit(lpips.lpips_distance)


@pytest.fixture(scope="module")
def ref():
  return np.load(FIXTURE + ".npz")


def test_parity_with_torch_reference(weights, distance, ref):
  np.testing.assert_array_equal(ref["widths"], [w for stage in SMALL_STAGES for w in stage])
  d = np.asarray(distance(weights.params, ref["x"], ref["y"]))
  assert d.shape == (2,)
  # The reference is float64 torch on the same float32 inputs and weights; this side is float32 at
  # Precision.HIGHEST through 13 convs, a normalisation and a sum of five terms. Measured: 2.3e-7
  # relative (float32 torch vs float64 torch: 7e-8), i.e. float32 rounding of that chain. 1e-5 leaves a
  # 40x margin for other CPUs / XLA versions while the smallest formula error tried (two ScalingLayer
  # scale constants swapped) moves the values by 1.8e-3, a flipped kernel by 1e-1, a wrong shift sign
  # by 2e-1.
  np.testing.assert_allclose(d, ref["distance"], rtol=1e-5, atol=0)
  np.testing.assert_allclose(d, ref["distance_float32"], rtol=1e-5, atol=0)


def test_identity_is_exactly_zero(weights, distance, ref):
  d = np.asarray(distance(weights.params, ref["x"], ref["x"]))
  np.testing.assert_array_equal(d, np.zeros(2, np.float32))


def test_symmetry(weights, distance, ref):
  dxy = np.asarray(distance(weights.params, ref["x"], ref["y"]))
  dyx = np.asarray(distance(weights.params, ref["y"], ref["x"]))
  np.testing.assert_array_equal(dxy, dyx)  # two separate VGG passes, so the swap is bit-exact
  assert np.all(dxy > 0)


def test_gray_is_repeated_to_rgb(ref):
  # lpips_distance maps both inputs through _to_rgb first (checked here without a second compile).
  gray = ref["x"][..., :1]
  np.testing.assert_array_equal(np.asarray(lpips._to_rgb(gray)), np.repeat(gray, 3, -1))
  np.testing.assert_array_equal(np.asarray(lpips._to_rgb(ref["x"])), ref["x"])
  with pytest.raises(ValueError, match="1 or 3 channels"):
    lpips._to_rgb(np.zeros((1, 16, 16, 2)))


def test_weights_record_hashes_and_layout(weights):
  assert weights.vgg_sha256 == lpips.file_sha256(VGG_PATH)
  assert weights.lin_sha256 == lpips.file_sha256(LIN_PATH)
  assert weights.sha256 == f"{weights.vgg_sha256}+{weights.lin_sha256}"
  assert lpips.stages_from_params(weights.params) == SMALL_STAGES
  sd = torch_pickle.load_torch_state_dict(VGG_PATH)
  np.testing.assert_array_equal(weights.params["vgg"]["features_5"]["kernel"],
                                np.transpose(sd["features.5.weight"], (2, 3, 1, 0)))  # OIHW -> HWIO
  assert weights.params["lin"]["lin4"].shape == (64,)


def test_too_small_and_mismatched_inputs(weights):
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="at least 16x16"):
    lpips.lpips_distance(weights.params, x, x)
  with pytest.raises(ValueError, match="same shape"):
    lpips.lpips_distance(weights.params, jnp.zeros((1, 16, 16, 3)), jnp.zeros((2, 16, 16, 3)))


def test_missing_file_names_path_and_source(tmp_path):
  missing = str(tmp_path / "vgg16-397923af.pth")
  with pytest.raises(FileNotFoundError) as err:
    lpips.load_lpips(missing, LIN_PATH)
  msg = str(err.value)
  assert missing in msg and lpips.VGG16_URL in msg and "never downloaded" in msg
  missing_lin = str(tmp_path / "vgg.pth")
  with pytest.raises(FileNotFoundError) as err:
    lpips.load_lpips(VGG_PATH, missing_lin, expected_sha256=None, stages=SMALL_STAGES)
  assert missing_lin in str(err.value) and lpips.LPIPS_LIN_URL in str(err.value)


def test_wrong_hash_is_refused():
  # The default hashes are the released files'; the fixture is not one of them.
  with pytest.raises(ValueError, match="SHA-256 mismatch") as err:
    lpips.load_lpips(VGG_PATH, LIN_PATH, stages=SMALL_STAGES)
  assert lpips.VGG16_SHA256 in str(err.value) and VGG_PATH in str(err.value)
  with pytest.raises(ValueError, match="SHA-256 mismatch") as err:
    lpips.load_lpips(VGG_PATH, LIN_PATH, expected_sha256=(None, "0" * 64), stages=SMALL_STAGES)
  assert LIN_PATH in str(err.value)


def _rewrite(src, dst, edit):
  sd = collections.OrderedDict(torch_pickle.load_torch_state_dict(src))
  edit(sd)
  torch_save.save(dst, sd)
  return str(dst)


def test_wrong_shape_names_the_key(tmp_path):
  def widen_conv(sd):
    sd["features.7.weight"] = np.zeros((16, 17, 3, 3), np.float32)
  bad_vgg = _rewrite(VGG_PATH, tmp_path / "vgg.pth", widen_conv)
  with pytest.raises(ValueError, match=r"features\.7\.weight"):
    lpips.load_lpips(bad_vgg, LIN_PATH, expected_sha256=None, stages=SMALL_STAGES)

  def flat_lin(sd):
    sd["lin2.model.1.weight"] = np.ones((32,), np.float32)
  bad_lin = _rewrite(LIN_PATH, tmp_path / "lin.pth", flat_lin)
  with pytest.raises(ValueError, match=r"lin2\.model\.1\.weight"):
    lpips.load_lpips(VGG_PATH, bad_lin, expected_sha256=None, stages=SMALL_STAGES)

  # The fixture is a reduced net: read as full-width VGG16 it is refused at the first conv.
  with pytest.raises(ValueError, match=r"features\.0\.weight"):
    lpips.load_lpips(VGG_PATH, LIN_PATH, expected_sha256=None)


def test_missing_unexpected_and_negative_keys(tmp_path):
  bad = _rewrite(VGG_PATH, tmp_path / "a.pth", lambda sd: sd.pop("features.28.bias"))
  with pytest.raises(ValueError, match=r"features\.28\.bias"):
    lpips.load_lpips(bad, LIN_PATH, expected_sha256=None, stages=SMALL_STAGES)
  bad = _rewrite(LIN_PATH, tmp_path / "b.pth", lambda sd: sd.update(lin5=np.ones(1, np.float32)))
  with pytest.raises(ValueError, match="unexpected key 'lin5'"):
    lpips.load_lpips(VGG_PATH, bad, expected_sha256=None, stages=SMALL_STAGES)

  def negate(sd):
    sd["lin0.model.1.weight"] = -sd["lin0.model.1.weight"]
  bad = _rewrite(LIN_PATH, tmp_path / "c.pth", negate)
  with pytest.raises(ValueError, match="negative"):
    lpips.load_lpips(VGG_PATH, bad, expected_sha256=None, stages=SMALL_STAGES)


def test_normalisation_gradient_is_finite_at_a_dead_pixel():
  f = jnp.zeros((1, 2, 2, 4)).at[0, 0, 0].set(jnp.array([1.0, 2.0, 0.0, 2.0]))  # three all-zero pixels
  np.testing.assert_allclose(np.asarray(lpips._unit_normalise(f))[0, 0, 0], [1 / 3, 2 / 3, 0, 2 / 3],
                             rtol=1e-6)
  g = jax.jit(jax.grad(lambda f: jnp.sum(lpips._unit_normalise(f) * jnp.arange(4.0))))(f)
  assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.slow  # compiling the VGG backward pass takes ~5 s of CPU, as much as the rest of the file
def test_gradient_is_finite(weights, ref):
  # The perceptual loss term differentiates through it, also at x == y.
  g = jax.jit(jax.grad(lambda x, y: lpips.lpips_distance(weights.params, x, y).sum()))
  for y in (ref["y"], ref["x"]):
    assert np.all(np.isfinite(np.asarray(g(ref["x"], y))))


def test_metrics_layer_imports_only_io():
  import ast
  tree = ast.parse(open(lpips.__file__).read())
  project = {node.module for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("score_sde")}
  project |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
              if a.name.startswith("score_sde")}
  assert "score_sde.io" in project  # the .pth reader
  assert all(m.startswith(("score_sde.io", "score_sde.metrics")) for m in project), project
