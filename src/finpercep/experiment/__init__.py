"""The paper's experiments at the scale of one machine: the reward-hacking table, curves and report."""

from .hacking import ROW_NAMES, ROWS, TRAIN_PHOTOS, HackingConfig, RowSpec, run_hacking

__all__ = ["ROWS", "ROW_NAMES", "TRAIN_PHOTOS", "HackingConfig", "RowSpec", "run_hacking"]
