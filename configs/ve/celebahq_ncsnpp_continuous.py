r"""NCSN++ on CelebA-HQ 1024x1024 with the VE SDE, continuous time.

The FFHQ 1024x1024 experiment with the CelebA-HQ images and a summed (not averaged) loss:

    python main.py --config configs/ve/celebahq_ncsnpp_continuous.py \
        --workdir runs/ve_celebahq_ncsnpp_continuous --mode train \
        --config.data.path=/data/celebahq-1024

Expected: no published number (the paper shows 1024x1024 CelebA-HQ samples).
"""
import ml_collections

from configs.ve import ffhq_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = ffhq_ncsnpp_continuous.get_config()
  config.training.reduce_mean = False
  return config
