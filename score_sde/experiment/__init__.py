"""The experiment system: config builders, training loops, evaluation and the CLI."""
