"""The smallest training configs that exercise the real pipeline on 8x8 digits: a one-level DDPM++
(`tiny_config`) and a one-block class-conditional DiT with classifier-free guidance (`tiny_dit_config`)."""
import importlib.util
import os

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digits_config(name, getter="get_config"):
  spec = importlib.util.spec_from_file_location(
      "digits_config", os.path.join(_ROOT, "configs", "digits", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return getattr(module, getter)()


def _tiny_schedule(config):
  config.data.image_size = 8
  config.model.num_scales = 50
  config.training.batch_size = 8
  config.training.n_jitted_steps = 1
  config.training.log_freq = 1
  config.training.eval_freq = 1000
  config.training.snapshot_freq = 1000
  config.training.snapshot_freq_for_preemption = 2
  config.training.snapshot_sampling = False
  config.optim.warmup = 2
  return config


def tiny_config():
  # The shared base (PC Euler-Maruyama sampler, per-sample bits/dim), as the other digits configs.
  config = _digits_config("ddpmpp_vp_small", "get_shared_config")
  config.model.nf = 8
  config.model.ch_mult = (1,)
  config.model.resblock_type = "ddpm"
  config.model.attn_resolutions = ()
  config.model.dropout = 0.1  # exercises the dropout key derivation
  return _tiny_schedule(config)


def tiny_dit_config():
  config = _digits_config("dit")
  config.model.update(hidden_size=16, depth=1, num_heads=2, num_classes=10)
  config.training.class_dropout = 0.1
  config.sampling.guidance = "cfg"
  config.sampling.guidance_scale = 1.0
  return _tiny_schedule(config)
