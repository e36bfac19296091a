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
