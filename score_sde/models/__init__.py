"""Score networks and the plain table of their names (the names of the reference configs).

Every module takes explicit fields; `score_sde.experiment.builders.get_model` maps a config onto
them. The call convention is `model.apply({'params': params}, x, noise_labels, train=bool,
class_labels=None, rngs={'dropout': key})` with x [B, H, W, C] and noise_labels [B]. Only `ncsnpp`,
`ddpm` and `dit` can be class-conditional (`num_classes` > 0, `class_labels` int [B], see ncsnpp.py).
"""
from typing import Callable, Dict

from score_sde.models import ncsn
from score_sde.models.ddpm import DDPM
from score_sde.models.dit import DiT
from score_sde.models.ncsnpp import NCSNpp

# The RefineNet constructors also take `image_size` and `reference` (see ncsn.py).
MODELS: Dict[str, Callable] = {
    "ncsnpp": NCSNpp,
    "ddpm": DDPM,
    "dit": DiT,
    "ncsn": ncsn.ncsn,
    "ncsnv2": ncsn.ncsnv2,
    "ncsnv2_64": ncsn.ncsnv2_64,
    "ncsnv2_128": ncsn.ncsnv2_128,
    "ncsnv2_256": ncsn.ncsnv2_256,
}

CLASS_CONDITIONAL_MODELS = ("ncsnpp", "ddpm", "dit")
