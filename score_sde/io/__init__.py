"""Input and output: datasets, checkpoints, logging and checkpoint conversion."""
