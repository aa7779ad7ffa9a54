"""``python -m empathy.predict input=pairs.csv output=scored.csv models.ER=... models.IP=...``"""

from empathy.predict.cli import main

if __name__ == "__main__":
    main()
