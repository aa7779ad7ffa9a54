"""empathy: EPITOME empathy recognition (Sharma et al., EMNLP 2020) as a config-driven framework."""

from pathlib import Path

# The Hydra config tree (conf/ beside the package in a checkout or editable install).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

MECHANISMS = ("ER", "IP", "EX")
# The mechanism name of a joint model (model=joint): one model scoring all of MECHANISMS.
JOINT = "joint"
LEVELS = (0, 1, 2)

__version__ = "0.1.0"
