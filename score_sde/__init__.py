"""score_sde: score-based generative modelling through SDEs (Song et al., ICLR 2021) in JAX/Flax."""
