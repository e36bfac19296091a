"""Train, evaluate and sample score-based models: ``python main.py --help``."""
from absl import flags

from score_sde.experiment import cli

flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
  cli.main()
