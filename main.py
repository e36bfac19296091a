"""Train, evaluate and sample score-based models: ``python main.py --help``."""
from score_sde import cli

if __name__ == "__main__":
  cli.main()
