"""NCSN++/DDPM++ and DDPM: exact parameter counts (eval_shape), every option at tiny size, dropout rngs."""
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde.experiment.builders import get_model
from score_sde.models.layers import AttnBlockpp, GaussianFourierProjection, ResnetBlockBigGANpp
from score_sde.models.ncsnpp import NCSNpp, discrete_sigmas


def ncsnpp_cifar10_config(**overrides):
  """NCSN++ cont. (VE) CIFAR-10 settings of the reference, with `model` field overrides."""
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({"continuous": True})
  config.data = ml_collections.ConfigDict(
      {"image_size": 32, "num_channels": 3, "centered": False})
  config.model = ml_collections.ConfigDict(dict(
      name="ncsnpp", scale_by_sigma=True, normalization="GroupNorm", nonlinearity="swish",
      nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
      resamp_with_conv=True, conditional=True, fir=True, fir_kernel=[1, 3, 3, 1],
      skip_rescale=True, resblock_type="biggan", progressive="none",
      progressive_input="residual", progressive_combine="sum", attention_type="ddpm",
      init_scale=0.0, fourier_scale=16, conv_size=3, embedding_type="fourier", dropout=0.1,
      sigma_min=0.01, sigma_max=50.0, num_scales=1000, beta_min=0.1, beta_max=20.0))
  config.model.update(overrides)
  return config


def ddpmpp_overrides():
  return dict(fir=False, progressive_input="none", embedding_type="positional",
              scale_by_sigma=False)


def param_count(config, image_size=32):
  model = get_model(config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)),
                         jnp.ones((1,)), train=False))
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"]))


@pytest.mark.parametrize("name,overrides,expected", [
    ("NCSN++ cont.", {}, 62_758_915),
    ("NCSN++ cont. deep", {"num_res_blocks": 8}, 107_587_075),
    ("DDPM++ cont.", ddpmpp_overrides(), 61_804_419),
    ("DDPM++ cont. deep", dict(ddpmpp_overrides(), num_res_blocks=8), 106_632_579),
    ("tiny VE", {"nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1}, 754_915),
])
def test_reference_parameter_counts(name, overrides, expected):
  assert param_count(ncsnpp_cifar10_config(**overrides)) == expected, name


def ddpm_count_by_hand(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_res=(16,), size=32,
                       channels=3, attn_per_up_block=False):
  """Count Ho et al.'s UNet layer by layer (independent of the Flax code)."""
  conv = lambda i, o, k=3: k * k * i * o + o
  gn = lambda c: 2 * c
  temb = 4 * nf

  def res(i, o):
    return gn(i) + conv(i, o) + (temb * o + o) + gn(o) + conv(o, o) + (i * o + o if i != o else 0)

  attn = lambda c: gn(c) + 4 * (c * c + c)
  total = (nf * temb + temb) + (temb * temb + temb) + conv(channels, nf)
  chans, c, res_now = [nf], nf, size
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      total += res(c, nf * mult) + (attn(nf * mult) if res_now in attn_res else 0)
      c = nf * mult
      chans.append(c)
    if level != len(ch_mult) - 1:
      total += conv(c, c)
      chans.append(c)
      res_now //= 2
  total += 2 * res(c, c) + attn(c)
  for level, mult in reversed(list(enumerate(ch_mult))):
    for _ in range(num_res_blocks + 1):
      total += res(c + chans.pop(), nf * mult)
      c = nf * mult
      total += attn(c) if attn_per_up_block and res_now in attn_res else 0
    total += attn(c) if not attn_per_up_block and res_now in attn_res else 0
    if level != 0:
      total += conv(c, c)
      res_now *= 2
  return total + gn(c) + conv(c, channels)


def test_ddpm_parameter_count():
  config = ncsnpp_cifar10_config(name="ddpm", num_res_blocks=2, scale_by_sigma=False)
  config.data.centered = True
  count = param_count(config)
  assert count == ddpm_count_by_hand() == 35_218_947
  # Ho et al. report 35.7M: their up path attends after every block, two more blocks at 16x16.
  assert round(ddpm_count_by_hand(attn_per_up_block=True) / 1e5) == 357


def random_params(model, x, labels, seed=0):
  """Random parameters of the model's exact shapes, without running its (slow, eager) init.

  Weights ~ N(0, 0.05²) (GroupNorm scales 1 + that) so that every branch, including those the
  reference initialises to ~0, visibly affects the output.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    offset = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(offset + 0.05 * rng.normal(size=s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def tiny_config(**overrides):
  base = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), init_scale=0.1,
              scale_by_sigma=False)
  config = ncsnpp_cifar10_config(**dict(base, **overrides))
  config.data.image_size = 8
  return config


PROGRESSIVE = ["none", "output_skip", "residual"]
PROGRESSIVE_INPUT = ["none", "input_skip", "residual"]
ALL_COMBOS = list(itertools.product(PROGRESSIVE, PROGRESSIVE_INPUT, ["ddpm", "biggan"],
                                    ["fourier", "positional"]))
# A covering array: every pair of values of any two of the four options occurs in some row.
PAIRWISE_ROWS = [(0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 1, 0), (1, 0, 1, 1), (1, 1, 0, 0),
                 (1, 2, 0, 1), (2, 0, 1, 0), (2, 1, 0, 1), (2, 2, 1, 1)]
PAIRWISE = [(PROGRESSIVE[a], PROGRESSIVE_INPUT[b], ["ddpm", "biggan"][c],
             ["fourier", "positional"][d]) for a, b, c, d in PAIRWISE_ROWS]


def combo_config(progressive, progressive_input, resblock_type, embedding_type):
  return tiny_config(progressive=progressive, progressive_input=progressive_input,
                     resblock_type=resblock_type, embedding_type=embedding_type,
                     progressive_combine="cat" if resblock_type == "ddpm" else "sum",
                     fir=embedding_type == "fourier")


def test_pairwise_rows_cover_all_pairs():
  for i, j in itertools.combinations(range(4), 2):
    assert {(r[i], r[j]) for r in PAIRWISE} == {(c[i], c[j]) for c in ALL_COMBOS}


@pytest.mark.parametrize("combo", ALL_COMBOS)
def test_every_option_combination_builds(combo):
  """All 36 combinations trace (abstractly, no compilation) to the right shapes."""
  model = get_model(combo_config(*combo))
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((2,), jnp.float32)
  out, variables = jax.eval_shape(
      lambda a, b: model.init_with_output(jax.random.PRNGKey(0), a, b, train=True), x, labels)
  assert out.shape == (2, 8, 8, 3)
  assert set(variables) == {"params"}


@pytest.mark.slow  # 4-14 s per combination: compiles a full NCSN++ each
@pytest.mark.parametrize("combo", PAIRWISE)
def test_option_combinations_run_and_condition_on_noise(combo):
  model = get_model(combo_config(*combo))
  # One eager forward pass (cheap on a shared CPU): each image twice, with two noise labels.
  x = X4
  labels = jnp.array([0.5, 3.0] * 2) if combo[3] == "fourier" else jnp.array([10.0, 700.0] * 2)
  out = model.apply({"params": random_params(model, x, labels)}, x, labels, train=False)
  assert out.shape == x.shape
  assert np.all(np.isfinite(out))
  # A different noise label must change the output for the same image (noise conditioning).
  diff = np.abs(np.asarray(out[0::2] - out[1::2])).reshape(2, -1).max(axis=1)
  assert np.all(diff > 1e-4)


# One input batch shared by the eager tests, so that they reuse each other's compiled ops.
X4 = jnp.repeat(jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3)), 2, axis=0)


@pytest.mark.slow
def test_scale_by_sigma_divides_by_sigma_continuous_and_discrete():
  x = X4
  for embedding_type, labels, sigmas in [
      ("fourier", jnp.array([0.5, 3.0, 0.5, 3.0]), np.array([0.5, 3.0, 0.5, 3.0])),
      ("positional", jnp.array([0, 999, 0, 999]), np.array([50.0, 0.01, 50.0, 0.01]))]:
    plain = get_model(tiny_config(embedding_type=embedding_type))
    scaled = get_model(tiny_config(embedding_type=embedding_type, scale_by_sigma=True))
    params = random_params(plain, x, labels)
    out = plain.apply({"params": params}, x, labels, train=False)
    out_scaled = scaled.apply({"params": params}, x, labels, train=False)
    np.testing.assert_allclose(out_scaled, out / sigmas[:, None, None, None], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(discrete_sigmas(0.01, 50.0, 1000))[[0, -1]], [50.0, 0.01],
                             rtol=1e-5)


@pytest.mark.slow
def test_centered_handling():
  """Uncentered models map [0, 1] data to [-1, 1]: f_uncentered(x) == f_centered(2x - 1)."""
  x, labels = X4, jnp.array([0.5, 3.0, 0.5, 3.0])
  uncentered = get_model(tiny_config())
  cfg = tiny_config()
  cfg.data.centered = True
  centered = get_model(cfg)
  params = random_params(uncentered, x, labels)
  np.testing.assert_allclose(uncentered.apply({"params": params}, x, labels, train=False),
                             centered.apply({"params": params}, 2 * x - 1, labels, train=False),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~5 s: initialises NCSN++ several times
def test_initialisation_scales():
  """fan_avg uniform init: limit sqrt(3 scale / fan_avg); init_scale 0 -> 1e-10; NIN scale 0.1."""
  block = ResnetBlockBigGANpp(act=jax.nn.swish, out_ch=16, init_scale=0.0)
  x = jnp.zeros((1, 4, 4, 8))
  params = block.init(jax.random.PRNGKey(0), x, jnp.zeros((1, 32)), train=False)["params"]
  limit = lambda scale, fan_in, fan_out: np.sqrt(3 * scale / ((fan_in + fan_out) / 2))
  w0 = np.abs(np.asarray(params["Conv_0"]["kernel"]))  # 3x3, 8 -> 16
  assert limit(1, 72, 144) * 0.9 < w0.max() <= limit(1, 72, 144)
  w1 = np.abs(np.asarray(params["Conv_1"]["kernel"]))  # init_scale 0 -> 1e-10
  assert limit(1e-10, 144, 144) * 0.9 < w1.max() <= limit(1e-10, 144, 144)
  dense = np.abs(np.asarray(params["Dense_0"]["kernel"]))  # 32 -> 16
  assert limit(1, 32, 16) * 0.9 < dense.max() <= limit(1, 32, 16)
  assert np.all(np.asarray(params["Conv_0"]["bias"]) == 0)
  assert np.all(np.asarray(params["GroupNorm_0"]["scale"]) == 1)
  attn = AttnBlockpp(init_scale=0.0)
  params = attn.init(jax.random.PRNGKey(1), jnp.zeros((1, 4, 4, 16)))["params"]
  nin = np.abs(np.asarray(params["NIN_0"]["W"]))  # NIN default scale 0.1
  assert limit(0.1, 16, 16) * 0.9 < nin.max() <= limit(0.1, 16, 16)
  assert np.abs(np.asarray(params["NIN_3"]["W"])).max() <= limit(1e-10, 16, 16)
  fourier = GaussianFourierProjection(embedding_size=4000, scale=16.0)
  w = np.asarray(fourier.init(jax.random.PRNGKey(2), jnp.ones((1,)))["params"]["W"])
  assert abs(np.std(w) - 16.0) < 16.0 * 4 / np.sqrt(2 * 4000)  # 4 standard errors


def test_fourier_features_are_frozen():
  layer = GaussianFourierProjection(embedding_size=4, scale=16.0)
  sigma = jnp.array([0.5, 3.0])
  params = layer.init(jax.random.PRNGKey(0), jnp.log(sigma))
  w = np.asarray(params["params"]["W"])
  out = np.asarray(layer.apply(params, jnp.log(sigma)))
  proj = np.log(np.asarray(sigma))[:, None] * w[None, :] * 2 * np.pi
  np.testing.assert_allclose(out, np.concatenate([np.sin(proj), np.cos(proj)], 1), rtol=1e-5,
                             atol=1e-5)
  grads = jax.grad(lambda p: layer.apply(p, jnp.log(sigma)).sum())(params)
  assert np.all(np.asarray(grads["params"]["W"]) == 0)


def test_dropout_rng_behaviour():
  model = get_model(tiny_config(dropout=0.5))
  x, labels = X4, jnp.array([0.5, 3.0, 0.5, 3.0])
  params = random_params(model, x, labels)
  run = jax.jit(lambda key: model.apply({"params": params}, x, labels, train=True,
                                        rngs={"dropout": jax.random.PRNGKey(key)}))
  np.testing.assert_array_equal(run(3), run(3))
  assert not np.allclose(run(3), run(4))
  evaluate = jax.jit(lambda rngs: model.apply({"params": params}, x, labels, train=False,
                                              rngs=rngs))
  np.testing.assert_array_equal(evaluate({}), evaluate({"dropout": jax.random.PRNGKey(9)}))
  with pytest.raises(Exception, match="dropout"):
    model.apply({"params": params}, x, labels, train=True)


@pytest.mark.slow
def test_ddpm_forward_and_conditioning():
  config = tiny_config(name="ddpm", ch_mult=(1, 2), nf=32)
  model = get_model(config)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  labels = jnp.array([10.0, 900.0])
  params = random_params(model, x, labels)
  out = model.apply({"params": params}, x, labels, train=False)
  assert out.shape == x.shape and np.all(np.isfinite(out))
  out_swapped = model.apply({"params": params}, x, labels[::-1], train=False)
  assert np.all(np.abs(np.asarray(out - out_swapped)).reshape(2, -1).max(axis=1) > 1e-4)


@pytest.mark.parametrize("field,value,message", [
    ("name", "unet9000", "choose one of \\[.*'ncsnpp'.*'ddpm'"),
    ("progressive", "skip", "valid choices: \\['none', 'output_skip', 'residual'\\]"),
    ("progressive_input", "bogus", "input_skip"),
    ("resblock_type", "resnet", "biggan"),
    ("embedding_type", "learned", "positional"),
    ("nonlinearity", "gelu", "swish"),
    ("progressive_combine", "mul", "cat"),
    ("attention_type", "flash", "ddpm"),
    ("normalization", "InstanceNorm++", "GroupNorm"),
])
def test_bad_options_list_valid_choices(field, value, message):
  with pytest.raises(ValueError, match=message):
    get_model(tiny_config(**{field: value}))


def test_fourier_embedding_needs_continuous_training():
  config = tiny_config()
  config.training.continuous = False
  with pytest.raises(ValueError, match="continuous"):
    get_model(config)


def test_call_shape_errors():
  model = NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
  with pytest.raises(ValueError, match="noise_labels \\[B\\]"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)), jnp.ones((3,)), train=False)
  with pytest.raises(ValueError, match="divisible"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 3)), jnp.ones((1,)), train=False)
