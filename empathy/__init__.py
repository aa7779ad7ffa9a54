"""empathy: EPITOME empathy recognition (Sharma et al., EMNLP 2020) as a config-driven framework."""

MECHANISMS = ("ER", "IP", "EX")
LEVELS = (0, 1, 2)

__version__ = "0.1.0"
