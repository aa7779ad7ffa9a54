"""Reproduce the paper's table: train every (experiment, mechanism, seed), then write
results/paper_table.{md,csv}. See ``python scripts/reproduce_table.py --help`` and
empathy/study/reproduce.py."""

import sys

from empathy.study.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
