r"""NCSN++ on LSUN church_outdoor 256x256 with the VE SDE, continuous time.

The bedroom experiment with the church images and sigma_max 380.

    python main.py --config configs/ve/church_ncsnpp_continuous.py \
        --workdir runs/ve_church_ncsnpp_continuous --mode train

Needs tfds `lsun/church_outdoor` prepared as array_record (docs/data.md).
Expected: no published number; the reference README shows samples of its checkpoint.
"""
import ml_collections

from configs.ve import bedroom_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = bedroom_ncsnpp_continuous.get_config()
  config.data.category = "church_outdoor"
  config.model.sigma_max = 380.
  return config
