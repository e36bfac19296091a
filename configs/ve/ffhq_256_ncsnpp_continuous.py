r"""NCSN++ on FFHQ 256x256 with the VE SDE, continuous time.

The images are read from a folder of PNG/JPEG files (FFHQ exported at 256x256; other sizes are
center-cropped and resized), given on the command line:

    python main.py --config configs/ve/ffhq_256_ncsnpp_continuous.py \
        --workdir runs/ve_ffhq_256_ncsnpp_continuous --mode train \
        --config.data.path=/data/ffhq-256

Expected: no published number; the reference README shows samples of its checkpoint.
"""
import ml_collections

from configs import architectures, default_lsun_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_lsun_configs.get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = True

  config.sampling.method = "pc"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"

  config.data.dataset = "folder"  # the reference reads a TFRecord file here
  config.data.image_size = 256

  config.model.sigma_max = 348.
  config.model.update(architectures.ncsnpp_256(
      scale_by_sigma=True, ema_rate=0.999, embedding_type="fourier"))
  return config
