r"""NCSN++ on FFHQ 1024x1024 with the VE SDE, continuous time.

The images are read from a folder of 1024x1024 PNG/JPEG files:

    python main.py --config configs/ve/ffhq_ncsnpp_continuous.py \
        --workdir runs/ve_ffhq_ncsnpp_continuous --mode train \
        --config.data.path=/data/ffhq-1024

Expected: no published number; the reference README shows samples of its checkpoint.
"""
import ml_collections

from configs import architectures, default_lsun_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_lsun_configs.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = True
  config.training.batch_size = 8
  config.training.reduce_mean = True

  config.sampling.method = "pc"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.sampling.snr = 0.15

  config.eval.batch_size = 1024
  config.eval.begin_ckpt = 1
  config.eval.end_ckpt = 96

  config.data.dataset = "folder"  # the reference reads a TFRecord file here
  config.data.image_size = 1024

  config.model.sigma_max = 1348.
  config.model.update(architectures.ncsnpp_1024(
      scale_by_sigma=True, ema_rate=0.9999, embedding_type="fourier"))
  return config
