"""DDPM (Ho et al., 2020) on LSUN church_outdoor 256x256; the bedroom settings on church images.

    python main.py --config configs/vp/ddpm/church.py --workdir runs/vp_ddpm_church --mode train

Needs tfds `lsun/church_outdoor` prepared as array_record (docs/data.md).
Expected: no published number for this configuration.
"""
import ml_collections

from configs.vp.ddpm import bedroom


def get_config() -> ml_collections.ConfigDict:
  config = bedroom.get_config()
  config.data.category = "church_outdoor"
  return config
