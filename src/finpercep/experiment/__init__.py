"""The paper's experiments at the scale of one machine: the reward-hacking table, curves and report.

:mod:`.config` (what is run), :mod:`.hacking` (running it), :mod:`.collect` (the numbers from the runs'
files), :mod:`.stats` and :mod:`.findings` (intervals and the findings' text), :mod:`.table`, :mod:`.plots`
and :mod:`.page` (table, curves, HTML page from ``templates/``), :mod:`.report` (the report folder).
"""

from .config import ROW_NAMES, ROWS, TRAIN_PHOTOS, HackingConfig, RLSettings, RowSpec
from .hacking import run_hacking

__all__ = ["ROWS", "ROW_NAMES", "TRAIN_PHOTOS", "HackingConfig", "RLSettings", "RowSpec", "run_hacking"]
