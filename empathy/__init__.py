"""empathy: EPITOME empathy recognition (Sharma et al., EMNLP 2020) as a config-driven framework."""

from pathlib import Path

# The Hydra config tree: empathy/conf in an installed package (pyproject.toml ships the checkout's
# conf/ there), else conf/ beside the package (a checkout or an editable install).
_PACKAGED_CONFIG = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = str(_PACKAGED_CONFIG if _PACKAGED_CONFIG.is_dir() else Path(__file__).resolve().parents[1] / "conf")

MECHANISMS = ("ER", "IP", "EX")
# The mechanism name of a joint model (model=joint): one model scoring all of MECHANISMS.
JOINT = "joint"
LEVELS = (0, 1, 2)

__version__ = "0.1.0"
