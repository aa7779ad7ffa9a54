"""Small synthetic EPITOME-format files: for tests, smoke runs and benchmarks without the real data.

The texts are made of a few templates, and each mechanism's level decides which phrases the
response contains (and which are its rationales), so a model can learn something from them.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

FILES = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}
SEEKERS = [
    "I feel so alone lately and nobody seems to care.",
    "Can't sleep again, my mind keeps racing about work.",
    "Lost my job today. I don't know what to do anymore.",
    "Everything feels pointless, even the things I used to love.",
    "My friends stopped talking to me and I don't know why.",
    "I keep failing my exams no matter how hard I study.",
]
PHRASES = {
    "ER": ("I'm so sorry you're going through this.", "That sounds really hard."),
    "IP": ("I understand how lonely that feels.", "I went through something similar last year."),
    "EX": ("What happened that made you feel this way?", "Have you talked to anyone about it?"),
}
FILLER = ["Hang in there.", "Things can change.", "Take care of yourself.", "Sleep helps a lot."]


def write_synthetic_epitome(folder: str | Path, n_rows: int = 60, seed: int = 0) -> Path:
    """Write the three mechanism CSVs (same pairs, per-mechanism levels) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pairs = []
    for i in range(n_rows):
        seeker_index = i % (len(SEEKERS) * 3)
        seeker = SEEKERS[seeker_index % len(SEEKERS)] + ("" if seeker_index < len(SEEKERS) else f" ({seeker_index})")
        levels = {m: rng.choice((0, 0, 1, 2)) for m in FILES}
        pieces, rationales = [rng.choice(FILLER)], {m: [] for m in FILES}
        for m, level in levels.items():
            if level:
                phrase = " ".join(PHRASES[m][:level])
                pieces.append(phrase)
                rationales[m].append(phrase)
        rng.shuffle(pieces)
        pairs.append((f"s{seeker_index}", f"r{i}", seeker, " ".join(pieces), levels, rationales))
    for mechanism, name in FILES.items():
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales"])
            for sp_id, rp_id, seeker, response, levels, rationales in pairs:
                writer.writerow([sp_id, rp_id, seeker, response, levels[mechanism], "|".join(rationales[mechanism])])
    return folder
