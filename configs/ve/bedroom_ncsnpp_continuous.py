r"""NCSN++ on LSUN bedroom 256x256 with the VE SDE, continuous time.

    python main.py --config configs/ve/bedroom_ncsnpp_continuous.py \
        --workdir runs/ve_bedroom_ncsnpp_continuous --mode train

Needs tfds `lsun/bedroom` prepared as array_record (docs/data.md).
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

  config.data.category = "bedroom"

  config.model.update(architectures.ncsnpp_256(
      scale_by_sigma=True, ema_rate=0.999, embedding_type="fourier"))
  return config
