"""The mathematics of diffusion: SDEs, parametrizations, objectives and exact toy oracles."""
