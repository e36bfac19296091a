"""The smallest training config that exercises the real pipeline: a one-level DDPM++ on 8x8 digits."""
import importlib.util
import os

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config():
  spec = importlib.util.spec_from_file_location(
      "digits_config", os.path.join(_ROOT, "configs", "digits", "ddpmpp_vp_small.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.image_size = 8
  config.model.nf = 8
  config.model.ch_mult = (1,)
  config.model.resblock_type = "ddpm"
  config.model.attn_resolutions = ()
  config.model.num_scales = 50
  config.model.dropout = 0.1  # exercises the dropout key derivation
  config.training.batch_size = 8
  config.training.n_jitted_steps = 1
  config.training.log_freq = 1
  config.training.eval_freq = 1000
  config.training.snapshot_freq = 1000
  config.training.snapshot_freq_for_preemption = 2
  config.training.snapshot_sampling = False
  config.optim.warmup = 2
  return config
