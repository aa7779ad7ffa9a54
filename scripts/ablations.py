"""The ablation study that chose the defaults: cross-validate every lever of
conf/study/levers.yaml inside train + dev, then test the chosen configurations; write
results/ablations.{md,csv}. See ``python scripts/ablations.py --help``,
empathy/study/ablations.py and docs/study.md."""

from empathy.study.ablations import main

if __name__ == "__main__":
    main()
