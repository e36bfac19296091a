"""Experiment configurations: one `get_config()` file per experiment, as ml_collections ConfigDicts.

Run one with `python main.py --config configs/<family>/<experiment>.py --workdir DIR --mode train`.
The repository root must be on `sys.path` (it is when running `python main.py` from it), because
the files import their bases as `configs.*`. See docs/configs.md.
"""
