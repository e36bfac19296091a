"""Network hyper-parameters (`config.model` fields) shared by several experiments.

Each function returns the fields of one network of the reference implementation, to apply with
`config.model.update(...)`. The arguments are what the experiments choose differently: whether the
output is divided by sigma (VE only), the EMA rate, and the time embedding ('fourier' for
continuous VE training, 'positional' otherwise).
"""
from typing import Any


def _ncsnpp_common(*, scale_by_sigma: bool, ema_rate: float, embedding_type: str) -> dict[str, Any]:
  """Fields shared by every NCSN++ / DDPM++ network."""
  return dict(
      name="ncsnpp",
      scale_by_sigma=scale_by_sigma,
      ema_rate=ema_rate,
      embedding_type=embedding_type,
      normalization="GroupNorm",
      nonlinearity="swish",
      nf=128,
      attn_resolutions=(16,),
      resamp_with_conv=True,
      conditional=True,
      fir_kernel=(1, 3, 3, 1),
      skip_rescale=True,
      resblock_type="biggan",
      progressive_combine="sum",
      attention_type="ddpm",
      init_scale=0.,
      fourier_scale=16.,
      conv_size=3,
  )


def ncsnpp_cifar10(**choices) -> dict[str, Any]:
  """NCSN++ for 32x32 and 64x64 images: FIR resampling and residual input skips; 4 blocks."""
  return dict(_ncsnpp_common(**choices), ch_mult=(1, 2, 2, 2), num_res_blocks=4, fir=True,
              progressive="none", progressive_input="residual")


def ddpmpp_cifar10(**choices) -> dict[str, Any]:
  """DDPM++: NCSN++ without FIR resampling and without progressive input skips."""
  return dict(ncsnpp_cifar10(**choices), fir=False, progressive_input="none")


def ncsnpp_256(**choices) -> dict[str, Any]:
  """NCSN++ for 256x256 images: 7 resolutions, 2 blocks, output and input skip pyramids."""
  return dict(_ncsnpp_common(**choices), ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2,
              fir=True, progressive="output_skip", progressive_input="input_skip")


def ncsnpp_1024(**choices) -> dict[str, Any]:
  """NCSN++ for 1024x1024 images: 16 base channels, 8 resolutions, 1 block, no dropout."""
  return dict(ncsnpp_256(**choices), nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1,
              dropout=0.)


def ddpm(*, ch_mult: tuple[int, ...], scale_by_sigma: bool, ema_rate: float) -> dict[str, Any]:
  """The DDPM U-Net (Ho et al., 2020): 128 channels, 2 blocks per resolution, attention at 16x16."""
  return dict(
      name="ddpm",
      scale_by_sigma=scale_by_sigma,
      ema_rate=ema_rate,
      normalization="GroupNorm",
      nonlinearity="swish",
      nf=128,
      ch_mult=ch_mult,
      num_res_blocks=2,
      attn_resolutions=(16,),
      resamp_with_conv=True,
      conditional=True,
      conv_size=3,
  )


# DiT sizes (Peebles & Xie 2023, Table 1): depth, hidden size, heads.
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def dit(size: str, patch_size: int, *, ema_rate: float = 0.9999,
        learn_sigma: bool = True) -> dict[str, Any]:
  """DiT-{S,B,L,XL}/{2,4,8} (Peebles & Xie 2023): mlp_ratio 4, the paper's learned-σ output.

  The network takes any real noise label and is always noise-conditional, hence
  `embedding_type='positional'` and `scale_by_sigma=False` (the fields other code checks)."""
  if size not in DIT_SIZES:
    raise ValueError(f"DiT size {size!r}; valid choices: {sorted(DIT_SIZES)}.")
  if patch_size not in (2, 4, 8):
    raise ValueError(f"DiT patch_size {patch_size}; the paper's choices are 2, 4 and 8.")
  depth, hidden_size, num_heads = DIT_SIZES[size]
  return dict(name="dit", ema_rate=ema_rate, patch_size=patch_size, hidden_size=hidden_size,
              depth=depth, num_heads=num_heads, mlp_ratio=4.0, learn_sigma=learn_sigma,
              conditional=True, scale_by_sigma=False, embedding_type="positional", dropout=0.0,
              dtype="float32")


def refinenet(name: str, *, scale_by_sigma: bool, ema_rate: float) -> dict[str, Any]:
  """The RefineNet of NCSN ('ncsn') and NCSNv2 ('ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256').

  Conditional instance normalization++, ELU, bilinear upsampling (Song & Ermon, 2019; 2020).
  """
  return dict(
      name=name,
      scale_by_sigma=scale_by_sigma,
      ema_rate=ema_rate,
      normalization="InstanceNorm++",
      nonlinearity="elu",
      nf=128,
      interpolation="bilinear",
  )


def refinenet_optim(lr: float) -> dict[str, Any]:
  """`config.optim` fields of NCSN/NCSNv2 training: Adam at `lr`, no warmup, no clipping."""
  return dict(lr=lr, warmup=0, grad_clip=-1.)
