r"""NCSNv2 (Song & Ermon, 2020) on LSUN bedroom 128x128: 1086 noise levels from 190 to 0.01.

    python main.py --config configs/ve/ncsnv2/bedroom.py \
        --workdir runs/ve_ncsnv2_bedroom --mode train

Needs tfds `lsun/bedroom` prepared as array_record (docs/data.md).
Expected: no published number for this configuration.
"""
import ml_collections

from configs import architectures, default_lsun_configs


def get_config() -> ml_collections.ConfigDict:
  config = default_lsun_configs.get_default_configs()
  config.training.batch_size = 128
  config.training.sde = "vesde"
  # The reference misspells this field ('continuouse'), which leaves continuous training on;
  # NCSNv2 is trained on discrete noise levels, as its other configs are.
  config.training.continuous = False

  config.sampling.method = "pc"
  config.sampling.predictor = "none"
  config.sampling.corrector = "ald"
  config.sampling.n_steps_each = 3
  config.sampling.snr = 0.095

  config.data.category = "bedroom"
  config.data.image_size = 128

  config.model.sigma_max = 190.
  config.model.num_scales = 1086
  config.model.update(architectures.refinenet("ncsnv2_128", scale_by_sigma=True, ema_rate=0.9999))

  config.optim.update(architectures.refinenet_optim(lr=1e-4))
  return config
