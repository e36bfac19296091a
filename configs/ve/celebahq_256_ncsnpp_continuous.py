r"""NCSN++ on CelebA-HQ 256x256 with the VE SDE, continuous time.

Same hyper-parameters as FFHQ 256x256; only the image folder differs:

    python main.py --config configs/ve/celebahq_256_ncsnpp_continuous.py \
        --workdir runs/ve_celebahq_256_ncsnpp_continuous --mode train \
        --config.data.path=/data/celebahq-256

Expected: no published number; the reference README shows samples of its checkpoint.
"""
import ml_collections

from configs.ve import ffhq_256_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  return ffhq_256_ncsnpp_continuous.get_config()
