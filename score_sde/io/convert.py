"""Import the reference implementations' pretrained checkpoints into this project's parameter trees.

* score_sde_pytorch `.pth` files: `torch_pickle.load_torch_file` reads them without torch;
  `from_pytorch_checkpoint` maps its `model` state dict and its `ema` shadow parameters;
  `from_pytorch_state_dict` maps one state dict (`module.` prefixes of DataParallel are stripped).
* facebookresearch/DiT state dicts (released `DiT-XL-2-*.pt` files, and `model`/`ema` of its
  training checkpoints): the same two functions, dispatched on the model type.
* yang-song/score_sde (JAX/Flax) `checkpoint_N` msgpack files: `from_flax_checkpoint`.
* The KL autoencoder of latent diffusion / Stable Diffusion (`models.autoencoder.AutoencoderKL`),
  from a CompVis/LDM `.ckpt` (a bare VAE state dict or a whole SD checkpoint, whose VAE is under
  `first_stage_model.`) or a diffusers `AutoencoderKL` file (`diffusion_pytorch_model.safetensors`
  or `.bin`): `from_pytorch_state_dict` (dispatched on the model type) detects the layout from the
  keys. `load_state_dict_file` reads `.safetensors` and torch pickles (`.ckpt`, `.pth`, `.pt`,
  `.bin`) into {name: np.ndarray}.
* `score_sde/experiment/convert_cli.py` (`score-sde-convert`) writes the result as a training work
  directory.

Each conversion takes the Flax `model` the checkpoint is for (an NCSNpp, DDPM, DiT or
AutoencoderKL) and the `image_size` and `num_channels` of its inputs;
`score_sde.experiment.builders.conversion_kwargs` builds them from a config.

The key mapping is documented in docs/models.md. PyTorch keeps the network in one `all_modules`
ModuleList, indexed in construction order; inside each block the submodule names (Conv_0,
GroupNorm_1, NIN_0, Dense_0, Conv2d_0) are the same as in our Flax tree.
"""
import collections
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.io import torch_pickle
from score_sde.models import dit as dit_lib
from score_sde.models.autoencoder import AutoencoderKL
from score_sde.models.ddpm import DDPM
from score_sde.models.ncsnpp import NCSNpp

# ---------------------------------------------------------------------------------------------
# The PyTorch module list (`all_modules`) of each model, with the Flax name of every entry.
# ---------------------------------------------------------------------------------------------


class _Layout:
  """Walks an architecture in creation order, naming Flax modules `{Class}_{n}` like linen does."""

  def __init__(self):
    self._counts = collections.Counter()
    self.torch_modules: List[Tuple[Optional[str], str]] = []  # (flax name, kind) per torch index

  def flax(self, cls: str, in_torch: bool = True, kind: str = "block") -> str:
    name = f"{cls}_{self._counts[cls]}"
    self._counts[cls] += 1
    if in_torch:
      self.torch_modules.append((name, kind))
    return name


def _ncsnpp_layout(m: NCSNpp, image_size: int) -> List[Tuple[Optional[str], str]]:
  lay = _Layout()
  res_cls = "ResnetBlockBigGANpp" if m.resblock_type == "biggan" else "ResnetBlockDDPMpp"
  if m.embedding_type == "fourier":
    lay.flax("GaussianFourierProjection", kind="fourier")
  if m.conditional:
    lay.flax("Dense", kind="dense")
    lay.flax("Dense", kind="dense")
  lay.flax("Conv", kind="conv")
  num_levels = len(m.ch_mult)
  for i_level in range(num_levels):
    res = image_size // 2 ** i_level
    for _ in range(m.num_res_blocks):
      lay.flax(res_cls)
      if res in m.attn_resolutions:
        lay.flax("AttnBlockpp")
    if i_level != num_levels - 1:
      lay.flax("Downsample" if m.resblock_type == "ddpm" else res_cls)
      if m.progressive_input == "input_skip":
        lay.flax("Downsample", in_torch=False)  # torch: a parameter-free attribute
        lay.flax("Combine")
      elif m.progressive_input == "residual":
        lay.flax("Downsample")
  lay.flax(res_cls)
  lay.flax("AttnBlockpp")
  lay.flax(res_cls)
  for i_level in reversed(range(num_levels)):
    res = image_size // 2 ** i_level
    for _ in range(m.num_res_blocks + 1):
      lay.flax(res_cls)
    if res in m.attn_resolutions:
      lay.flax("AttnBlockpp")
    first = i_level == num_levels - 1
    if m.progressive == "output_skip":
      lay.flax("GroupNorm", kind="group_norm")
      lay.flax("Conv", kind="conv")
      if not first:
        lay.flax("Upsample", in_torch=False)  # torch: a parameter-free attribute
    elif m.progressive == "residual":
      if first:
        lay.flax("GroupNorm", kind="group_norm")
        lay.flax("Conv", kind="conv")
      else:
        lay.flax("Upsample")
    if i_level != 0:
      lay.flax("Upsample" if m.resblock_type == "ddpm" else res_cls)
  if m.progressive != "output_skip":
    lay.flax("GroupNorm", kind="group_norm")
    lay.flax("Conv", kind="conv")
  return lay.torch_modules


def _ddpm_layout(m: DDPM, image_size: int) -> List[Tuple[Optional[str], str]]:
  lay = _Layout()
  if m.conditional:
    lay.flax("Dense", kind="dense")
    lay.flax("Dense", kind="dense")
  lay.flax("Conv", kind="conv")
  num_levels = len(m.ch_mult)
  for i_level in range(num_levels):
    res = image_size // 2 ** i_level
    for _ in range(m.num_res_blocks):
      lay.flax("ResnetBlockDDPM")
      if res in m.attn_resolutions:
        lay.flax("AttnBlock")
    if i_level != num_levels - 1:
      lay.flax("Downsample")
  lay.flax("ResnetBlockDDPM")
  lay.flax("AttnBlock")
  lay.flax("ResnetBlockDDPM")
  for i_level in reversed(range(num_levels)):
    res = image_size // 2 ** i_level
    for _ in range(m.num_res_blocks + 1):
      lay.flax("ResnetBlockDDPM")
    if res in m.attn_resolutions:
      lay.flax("AttnBlock")
    if i_level != 0:
      lay.flax("Upsample")
  lay.flax("GroupNorm", kind="group_norm")
  lay.flax("Conv", kind="conv")
  return lay.torch_modules


_LAYOUTS = {NCSNpp: _ncsnpp_layout, DDPM: _ddpm_layout}


def _oihw_to_hwio(w):
  if w.ndim != 4:
    raise ValueError(f"a conv weight must be 4-D (OIHW), got shape {w.shape}")
  return np.transpose(w, (2, 3, 1, 0))


def _map_leaf(sub: str, param: str, value: np.ndarray) -> Tuple[str, np.ndarray]:
  """Torch (submodule, param) -> Flax (param, array) for one leaf, by submodule type."""
  if sub.startswith("Conv2d_"):  # FIR-resampling conv: params named weight/bias in both
    return param, _oihw_to_hwio(value) if param == "weight" else value
  if sub.startswith("Conv_"):
    return ("kernel", _oihw_to_hwio(value)) if param == "weight" else (param, value)
  if sub.startswith("Dense_"):
    if param == "weight" and value.ndim != 2:
      raise ValueError(f"a Linear weight must be 2-D (out, in), got shape {value.shape}")
    return ("kernel", value.T) if param == "weight" else (param, value)
  if sub.startswith("GroupNorm_"):
    return ("scale" if param == "weight" else param), value
  if sub.startswith(("NIN_", "GaussianFourierProjection_")):
    return param, value
  raise KeyError(f"no mapping for torch submodule {sub!r}")


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):
    value = value.detach().cpu()
  if hasattr(value, "numpy"):
    value = value.numpy()
  return np.asarray(value)


def _expected_params(model, image_size: int, num_channels: int) -> Dict:
  shape = (1, image_size, image_size, num_channels)
  if isinstance(model, AutoencoderKL):  # no time input; the posterior mode needs no key
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                             sample_posterior=False))["params"]
  num_classes = getattr(model, "num_classes", 0)
  class_kw = {"class_labels": jnp.full((1,), num_classes, jnp.int32)} if num_classes else {}
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.ones((1,)),
                                             train=False, **class_kw))
  return shapes["params"]


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _nest(flat: Dict[Tuple[str, ...], Any]) -> Dict:
  out: Dict = {}
  for path, v in flat.items():
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return out


def _check_against_model(flat: Dict[Tuple[str, ...], np.ndarray], model, image_size: int,
                         num_channels: int, source: str, expected: Optional[Dict] = None):
  """Checks the converted leaves against the model's parameters (names, shapes, finite values)
  and casts them to the model's dtypes, in place. `expected`: the flat parameter shapes, if the
  caller has them already."""
  if expected is None:
    expected = dict(_flatten(_expected_params(model, image_size, num_channels)))
  missing = sorted("/".join(p) for p in expected if p not in flat)
  unexpected = sorted("/".join(p) for p in flat if p not in expected)
  if missing or unexpected:
    raise ValueError(f"{source} does not match the {type(model).__name__} model: "
                     f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                     f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}. "
                     "Check that the model's fields match the checkpoint.")
  for path, spec in expected.items():
    if flat[path].shape != spec.shape:
      raise ValueError(f"{source}: {'/'.join(path)} has shape {flat[path].shape}, the model "
                       f"expects {spec.shape}; check the model's fields (nf, ch_mult, ...).")
    if not np.all(np.isfinite(flat[path])):
      raise ValueError(f"{source}: {'/'.join(path)} holds NaN or infinite values; the checkpoint "
                       "is corrupt or from a diverged run.")
    flat[path] = flat[path].astype(spec.dtype)  # e.g. float64 or int64 arrays -> the model's float32


def strip_module_prefix(state_dict: Dict[str, Any]) -> Dict[str, Any]:
  """Remove DataParallel's `module.` prefix from every key that has it."""
  return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def _pytorch_key_map(model, image_size: int) -> Dict[int, Tuple[str, str]]:
  """Torch `all_modules` index -> (Flax module name, kind) of `model` on `image_size` px inputs."""
  if type(model) not in _LAYOUTS:
    raise ValueError(f"No PyTorch mapping for model {type(model).__name__}; valid choices: "
                     f"{sorted(cls.__name__ for cls in _LAYOUTS)}.")
  return dict(enumerate(_LAYOUTS[type(model)](model, image_size)))


# facebookresearch/DiT module path -> our Flax path (models/dit.py).
_DIT_MODULES = (
    (r"x_embedder\.proj", r"x_embedder"),
    (r"t_embedder\.mlp\.([02])", r"t_embedder_\1"),
    (r"y_embedder\.embedding_table", r"y_embedder"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)", r"blocks_\1/attn/\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)", r"blocks_\1/mlp/\2"),
    (r"blocks\.(\d+)\.adaLN_modulation\.1", r"blocks_\1/adaLN_modulation"),
    (r"final_layer\.adaLN_modulation\.1", r"final_adaLN_modulation"),
    (r"final_layer\.linear", r"final_linear"),
)


def _dit_leaf(flax_module: str, param: str, value: np.ndarray) -> Tuple[str, np.ndarray]:
  if param == "bias":
    return param, value
  if flax_module == "y_embedder":
    return "embedding", value
  if flax_module == "x_embedder":  # Conv2d(C, D, p, stride p) = Dense on patchify's (p, p, C) order
    if value.ndim != 4:
      raise ValueError(f"the patch embedding weight must be 4-D (D, C, p, p), got {value.shape}")
    return "kernel", _oihw_to_hwio(value).reshape(-1, value.shape[0])
  if value.ndim != 2:
    raise ValueError(f"a Linear weight must be 2-D (out, in), got shape {value.shape}")
  return "kernel", value.T


def _from_dit_state_dict(state_dict: Dict[str, Any], model: dit_lib.DiT, image_size: int,
                         num_channels: int) -> Dict:
  """A facebookresearch/DiT state dict -> the `params` of `model`; `pos_embed` must equal our
  constant (for `image_size`), since it is frozen in the reference and not a parameter here."""
  flat: Dict[Tuple[str, ...], np.ndarray] = {}
  unused = []
  for key, value in state_dict.items():
    value = _as_numpy(value)
    if key == "pos_embed":
      grid = image_size // model.patch_size
      want = dit_lib.sincos_pos_embed_2d(model.hidden_size, grid, grid)[None]
      if value.shape != want.shape or not np.allclose(value, want, atol=1e-5):
        raise ValueError(f"The checkpoint's pos_embed {value.shape} is not the fixed sin-cos "
                         f"embedding of {want.shape} for image_size={image_size}, "
                         f"patch_size={model.patch_size}, hidden_size={model.hidden_size}.")
      continue
    module, _, param = key.rpartition(".")
    flax_module = next((re.sub(pattern, target, module) for pattern, target in _DIT_MODULES
                        if re.fullmatch(pattern, module)), None)
    if flax_module is None or param not in ("weight", "bias"):
      unused.append(key)
      continue
    try:
      flax_param, array = _dit_leaf(flax_module, param, value)
    except ValueError as e:
      raise ValueError(f"Cannot map PyTorch key {key!r} to {flax_module}: {e}") from None
    flat[tuple(flax_module.split("/")) + (flax_param,)] = array
  if unused:
    raise ValueError(f"Unused keys in the PyTorch state dict: {unused[:8]}; is this a DiT "
                     "checkpoint matching the model?")
  _check_against_model(flat, model, image_size, num_channels, "PyTorch state dict")
  return _nest(flat)


# ---------------------------------------------------------------------------------------------
# The KL autoencoder of LDM / Stable Diffusion (models/autoencoder.py), in two file layouts.
# ---------------------------------------------------------------------------------------------

LDM_LAYOUT, DIFFUSERS_LAYOUT = "LDM", "diffusers"
_SD_VAE_PREFIX = "first_stage_model."  # where a whole SD / LDM checkpoint keeps its autoencoder
_NORM_MODULES = ("norm1", "norm2", "norm", "norm_out")  # our GroupNorm submodule names
_ATTN_PROJECTIONS = ("q", "k", "v", "proj_out")
# diffusers attention submodule -> LDM's (both the current and the pre-0.14 names).
_DIFFUSERS_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                   "to_out.0": "proj_out", "query": "q", "key": "k", "value": "v",
                   "proj_attn": "proj_out"}


def _detect_autoencoder_layout(keys) -> str:
  diffusers = any(re.search(r"(^|\.)(down_blocks|up_blocks|mid_block|conv_norm_out)\.", k)
                  for k in keys)
  ldm = any(re.search(r"(^|\.)(down|up|mid)\.", k) or re.search(r"(^|\.)norm_out\.", k)
            for k in keys)
  if diffusers == ldm:
    raise ValueError("Cannot tell the autoencoder's layout from its keys: expected LDM keys "
                     "(encoder.down.0.block.0..., encoder.mid.attn_1...) or diffusers keys "
                     "(encoder.down_blocks.0.resnets.0..., encoder.mid_block...); found "
                     f"{'both' if ldm else 'neither'} in {sorted(keys)[:6]}...")
  return DIFFUSERS_LAYOUT if diffusers else LDM_LAYOUT


def _diffusers_to_ldm_module(module: str, num_levels: int) -> Optional[str]:
  """A diffusers AutoencoderKL module path -> LDM's (None when it has no counterpart).
  diffusers' decoder.up_blocks[k] is LDM's decoder.up[num_levels - 1 - k] (coarsest first)."""
  m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(.+)", module)
  if m:
    part, direction, level, rest = m.groups()
    level = int(level) if direction == "down" else num_levels - 1 - int(level)
    if level < 0:
      return None
    rest = re.sub(r"^resnets\.(\d+)\.conv_shortcut$", r"block.\1.nin_shortcut", rest)
    rest = re.sub(r"^resnets\.", "block.", rest)
    rest = re.sub(r"^(down|up)samplers\.0\.conv$", r"\1sample.conv", rest)
    m_attn = re.fullmatch(r"attentions\.(\d+)\.(.+)", rest)
    if m_attn:
      if m_attn.group(2) not in _DIFFUSERS_ATTN:
        return None
      rest = f"attn.{m_attn.group(1)}.{_DIFFUSERS_ATTN[m_attn.group(2)]}"
    return f"{part}.{direction}.{level}.{rest}"
  m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", module)
  if m:
    part, kind, index, rest = m.groups()
    if kind == "resnets":
      return f"{part}.mid.block_{int(index) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    if rest not in _DIFFUSERS_ATTN:
      return None
    return f"{part}.mid.attn_{int(index) + 1}.{_DIFFUSERS_ATTN[rest]}"
  return re.sub(r"^(encoder|decoder)\.conv_norm_out$", r"\1.norm_out", module)


def _ldm_to_flax_module(module: str) -> Optional[Tuple[str, ...]]:
  """An LDM AutoencoderKL module path -> our Flax module path (None when it is not one)."""
  m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)", module)
  if m:
    part, direction, level, kind, index, sub = m.groups()
    return (part, f"{direction}_{level}_{kind}_{index}", sub)
  m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(downsample|upsample)\.conv", module)
  if m:
    return (m.group(1), f"{m.group(2)}_{m.group(3)}_{m.group(4)}")
  m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_[12]|attn_1)\.(\w+)", module)
  if m:
    return (m.group(1), f"mid_{m.group(2)}", m.group(3))
  m = re.fullmatch(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)", module)
  if m:
    return m.groups()
  if module in ("quant_conv", "post_quant_conv"):
    return (module,)
  return None


def _autoencoder_leaf(flax_module: Tuple[str, ...], param: str,
                      value: np.ndarray) -> Tuple[str, np.ndarray]:
  if param not in ("weight", "bias"):
    raise ValueError(f"unknown parameter {param!r}")
  if flax_module[-1] in _NORM_MODULES:
    return ("scale" if param == "weight" else "bias"), value
  if param == "bias":
    return "bias", value
  if value.ndim == 2 and flax_module[-1] in _ATTN_PROJECTIONS:  # diffusers' Linear (out, in)
    return "kernel", value.T[None, None]
  return "kernel", _oihw_to_hwio(value)


def select_autoencoder_state_dict(state_dict: Dict[str, Any]) -> Dict[str, Any]:
  """The autoencoder's entries of `state_dict`: a Lightning checkpoint's `state_dict` entry is
  unwrapped; from a whole SD / LDM checkpoint only the `first_stage_model.` keys are kept (prefix
  removed; the UNet, EMA and text encoder are dropped); DataParallel's `module.` is stripped; and
  `loss.*` (the LPIPS network and discriminator of an LDM autoencoder training checkpoint, not
  part of the autoencoder) is dropped."""
  if isinstance(state_dict.get("state_dict"), dict):
    state_dict = state_dict["state_dict"]
  state_dict = strip_module_prefix(dict(state_dict))
  if any(k.startswith(_SD_VAE_PREFIX) for k in state_dict):
    state_dict = {k[len(_SD_VAE_PREFIX):]: v for k, v in state_dict.items()
                  if k.startswith(_SD_VAE_PREFIX)}
  return {k: v for k, v in state_dict.items() if not k.startswith("loss.")}


def _from_autoencoder_state_dict(state_dict: Dict[str, Any], model: AutoencoderKL,
                                 image_size: int, num_channels: int) -> Dict:
  """An LDM/CompVis or diffusers AutoencoderKL state dict -> the `params` of `model`.

  LDM layout (`encoder.down.0.block.0.norm1.weight`, `encoder.mid.attn_1.q.weight`,
  `decoder.up.3.upsample.conv.weight`, `quant_conv.weight`, ...): a bare VAE state dict, a whole
  Stable Diffusion checkpoint (only `first_stage_model.*` is used) or an LDM autoencoder training
  checkpoint, whose `loss.*` entries (LPIPS and the patch discriminator) are dropped.
  diffusers layout (`encoder.down_blocks.0.resnets.0.norm1.weight`, `encoder.mid_block.
  attentions.0.to_q.weight`, ...) is first renamed to LDM's keys: resnets -> block, conv_shortcut ->
  nin_shortcut, downsamplers.0 / upsamplers.0 -> downsample / upsample, mid_block.resnets.{0,1} ->
  mid.block_{1,2}, mid_block.attentions.0 -> mid.attn_1 with group_norm/to_q/to_k/to_v/to_out.0
  (or the older query/key/value/proj_attn) -> norm/q/k/v/proj_out, conv_norm_out -> norm_out, and
  decoder.up_blocks[k] -> decoder.up[L - 1 - k] for L = len(ch_mult).
  Conv weights OIHW -> HWIO, diffusers' Linear attention weights (out, in) -> 1×1 kernels
  (1, 1, in, out), GroupNorm weight -> scale. Every parameter of the model must be present, with
  its shape, and every tensor used; errors name the key and the detected layout.
  """
  state_dict = select_autoencoder_state_dict(state_dict)
  layout = _detect_autoencoder_layout(list(state_dict))
  source = f"AutoencoderKL state dict ({layout} layout)"
  flat: Dict[Tuple[str, ...], np.ndarray] = {}
  origin: Dict[Tuple[str, ...], str] = {}
  unused = []
  for key, value in state_dict.items():
    value = _as_numpy(value)
    module, _, param = key.rpartition(".")
    ldm_module = (_diffusers_to_ldm_module(module, len(model.ch_mult))
                  if layout == DIFFUSERS_LAYOUT else module)
    flax_module = _ldm_to_flax_module(ldm_module) if ldm_module else None
    if flax_module is None:
      unused.append(key)
      continue
    try:
      flax_param, array = _autoencoder_leaf(flax_module, param, value)
    except ValueError as e:
      raise ValueError(f"{source}: cannot map key {key!r} (shape {value.shape}) to "
                       f"{'/'.join(flax_module)}: {e}") from None
    path = flax_module + (flax_param,)
    if path in flat:
      raise ValueError(f"{source}: keys {origin[path]!r} and {key!r} both map to "
                       f"{'/'.join(path)}.")
    flat[path], origin[path] = array, key
  expected = dict(_flatten(_expected_params(model, image_size, num_channels)))
  unused += [origin[p] for p in flat if p not in expected]
  if unused:
    raise ValueError(f"{source}: unexpected keys {sorted(unused)[:8]} (no parameter of the "
                     f"AutoencoderKL(ch={model.ch}, ch_mult={tuple(model.ch_mult)}, "
                     f"num_res_blocks={model.num_res_blocks}, "
                     f"attn_resolutions={tuple(model.attn_resolutions)}) model on "
                     f"{image_size}px inputs); check the model's fields.")
  missing = sorted("/".join(p) for p in expected if p not in flat)
  if missing:
    raise ValueError(f"{source}: no key for the model's parameters {missing[:8]}"
                     f"{'...' if len(missing) > 8 else ''}; check the model's fields.")
  for path, spec in expected.items():
    if flat[path].shape != spec.shape:
      raise ValueError(f"{source}: key {origin[path]!r} gives {'/'.join(path)} the shape "
                       f"{flat[path].shape}, the model expects {spec.shape}; check the model's "
                       "fields (ch, ch_mult, z_channels, embed_dim, ...).")
  _check_against_model(flat, model, image_size, num_channels, source, expected)  # finite, dtypes
  return _nest(flat)


def load_state_dict_file(path) -> Dict[str, np.ndarray]:
  """{name: np.ndarray} from a `.safetensors` file (safetensors.numpy) or a torch pickle (`.ckpt`,
  `.pth`, `.pt`, `.bin`; read by `torch_pickle`, without torch). A Lightning / LDM checkpoint's
  `state_dict` entry is returned in place of the checkpoint; the other objects such a checkpoint
  pickles (Lightning callbacks, NumPy scalars) are read as inert placeholders and dropped. Raises FileNotFoundError for a missing
  file and ValueError for an unreadable one, naming the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No checkpoint file at {path!r}.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(f"Reading {path} needs the safetensors package "
                        "(pip install safetensors).") from None
    try:
      return dict(load_file(path))
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError, ...)
      raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
  if ext not in (".ckpt", ".pth", ".pt", ".bin"):
    raise ValueError(f"{path}: unknown checkpoint extension {ext!r}; expected .safetensors, "
                     ".ckpt, .pth, .pt or .bin.")
  try:
    obj = torch_pickle.load_torch_file(path, opaque_globals=True)
  except Exception as e:  # zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, ...
    raise ValueError(f"Cannot read the torch file {path}: {type(e).__name__}: {e}") from e
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict.")
  return dict(obj)


def from_pytorch_state_dict(state_dict: Dict[str, Any], model, *, image_size: int,
                            num_channels: int) -> Dict:
  """Map a score_sde_pytorch (NCSNpp, DDPM), facebookresearch/DiT (DiT) or LDM / diffusers
  KL-autoencoder (AutoencoderKL; see `_from_autoencoder_state_dict`) state dict to the `params`
  tree of `model`.

  Conv weights go OIHW -> HWIO, Linear (out, in) -> (in, out), GroupNorm weight -> scale; NIN and
  the frozen Fourier W keep their layout. The `sigmas` buffer is checked against the model's
  sigma_min, sigma_max and num_scales. DiT's patch-embedding conv becomes a Dense on patchified
  input and its `pos_embed` buffer is checked against the fixed embedding. Every parameter of the
  model must be present and every tensor must be used.
  """
  if isinstance(model, AutoencoderKL):
    return _from_autoencoder_state_dict(state_dict, model, image_size, num_channels)
  state_dict = strip_module_prefix(dict(state_dict))
  if isinstance(model, dit_lib.DiT):
    return _from_dit_state_dict(state_dict, model, image_size, num_channels)
  modules = _pytorch_key_map(model, image_size)
  flat: Dict[Tuple[str, ...], np.ndarray] = {}
  unused = []
  for key, value in state_dict.items():
    value = _as_numpy(value)
    if key == "sigmas":
      want = np.exp(np.linspace(np.log(model.sigma_max), np.log(model.sigma_min),
                                model.num_scales))
      if value.shape != want.shape or not np.allclose(value, want, rtol=1e-4):
        raise ValueError("The checkpoint's sigma table does not match the model's sigma_min/"
                         "sigma_max/num_scales.")
      continue
    match = re.fullmatch(r"all_modules\.(\d+)\.(?:(\w+)\.)?(\w+)", key)
    if not match or int(match.group(1)) not in modules:
      unused.append(key)
      continue
    flax_name, kind = modules[int(match.group(1))]
    sub, param = match.group(2), match.group(3)
    if sub == "Dense_0" and not model.conditional:
      continue  # torch creates temb Dense layers even when unconditional; never used
    try:  # a bare top-level layer's submodule type is its own Flax class
      flax_param, array = _map_leaf(sub or flax_name, param, value)
    except (KeyError, ValueError) as e:
      raise ValueError(f"Cannot map PyTorch key {key!r} (shape {value.shape}) to "
                       f"{flax_name}: {e}") from None
    flat[(flax_name,) + ((sub,) if sub else ()) + (flax_param,)] = array
  if unused:
    raise ValueError(f"Unused keys in the PyTorch state dict: {unused[:8]}; is this a "
                     f"{type(model).__name__} checkpoint matching the model?")
  _check_against_model(flat, model, image_size, num_channels, "PyTorch state dict")
  return _nest(flat)


def from_pytorch_checkpoint(checkpoint: Dict[str, Any], model, *, image_size: int,
                            num_channels: int) -> Dict[str, Dict]:
  """{'params', 'ema_params'} from a score_sde_pytorch checkpoint {'model', 'ema', ...}, or from a
  facebookresearch/DiT training checkpoint {'model', 'ema', 'opt', 'args'} for a DiT `model`, or
  a released DiT state dict (its EMA weights, used for both entries).

  The EMA entry stores `shadow_params`, a list aligned with the model's trainable parameters in
  registration order (buffers and the frozen Fourier W excluded); the W comes from `model`.
  """
  if isinstance(model, dit_lib.DiT) and "model" not in checkpoint:
    # A released DiT file (DiT-XL-2-256x256.pt) is a bare state dict of the EMA weights.
    params = from_pytorch_state_dict(checkpoint, model, image_size=image_size,
                                     num_channels=num_channels)
    return {"params": params, "ema_params": jax.tree.map(np.copy, params)}
  if "model" not in checkpoint:
    raise ValueError("Expected a score_sde_pytorch checkpoint with a 'model' entry; for a bare "
                     "state dict call from_pytorch_state_dict.")
  model_sd = strip_module_prefix(dict(checkpoint["model"]))
  inputs = dict(image_size=image_size, num_channels=num_channels)
  out = {"params": from_pytorch_state_dict(model_sd, model, **inputs)}
  if isinstance(model, dit_lib.DiT):  # DiT's train.py stores the EMA as a whole state dict
    if "ema" in checkpoint:
      out["ema_params"] = from_pytorch_state_dict(checkpoint["ema"], model, **inputs)
    return out
  if "ema" in checkpoint:
    shadow = list(checkpoint["ema"]["shadow_params"])
    trainable = [k for k in model_sd if k != "sigmas" and not re.fullmatch(r"all_modules\.0\.W", k)]
    if len(shadow) != len(trainable):
      raise ValueError(f"EMA has {len(shadow)} shadow params but the model has {len(trainable)} "
                       "trainable tensors.")
    ema_sd = dict(model_sd)
    ema_sd.update(zip(trainable, shadow))
    out["ema_params"] = from_pytorch_state_dict(ema_sd, model, **inputs)
  return out


def from_flax_checkpoint(source, model, *, image_size: int, num_channels: int) -> Dict[str, Dict]:
  """{'params', 'ema_params'} of `model` from a yang-song/score_sde checkpoint (flax msgpack state).

  `source` is a path or the raw bytes of `checkpoint_N`; its state has `optimizer.target` (the
  trained parameters) and `params_ema`, whose trees already use our module names.
  """
  from flax import serialization  # pylint: disable=import-outside-toplevel
  if isinstance(source, (str, os.PathLike)):
    with open(source, "rb") as f:
      source = f.read()
  state = serialization.msgpack_restore(source)
  try:
    params, ema = state["optimizer"]["target"], state["params_ema"]
  except KeyError:
    raise ValueError("Expected a score_sde (JAX) training state with 'optimizer'/'target' and "
                     f"'params_ema'; top-level keys are {sorted(state)}.") from None
  out = {}
  for key, tree in (("params", params), ("ema_params", ema)):
    tree = tree.get("params", tree)
    flat = {p: np.asarray(v) for p, v in _flatten(tree)}
    _check_against_model(flat, model, image_size, num_channels, f"Flax checkpoint {key}")
    out[key] = _nest(flat)
  return out
