"""The mechanisms' colours, line styles and markers, shared by the HTML viewer and the plots.

Colours are from the Okabe-Ito palette, which stays distinguishable with the common colour-vision
deficiencies; each mechanism also has a non-colour cue (its letters on highlights and badges in
the viewer, a line style and marker in the plots), so that nothing relies on colour alone.
"""

from __future__ import annotations

OKABE_ITO = {
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
    "black": "#000000",
}

# Saturated: plot lines, outlines and borders on white.
MECHANISM_COLOURS = {
    "ER": OKABE_ITO["vermillion"],
    "IP": OKABE_ITO["blue"],
    "EX": OKABE_ITO["bluish green"],
}

# Light tints (55 % colour on white): highlight backgrounds behind black text. IP's tint is of
# sky blue, which stays lighter than a tint of blue at the same strength.
TINT_STRENGTH = 0.55


def tint(colour: str, strength: float = TINT_STRENGTH) -> str:
    """``colour`` (``#RRGGBB``) mixed with white: ``strength`` 1 is the colour, 0 is white."""
    channels = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(255 - (255 - c) * strength):02x}" for c in channels)


MECHANISM_TINTS = {
    "ER": tint(OKABE_ITO["vermillion"]),
    "IP": tint(OKABE_ITO["sky blue"]),
    "EX": tint(OKABE_ITO["bluish green"]),
}

# Matplotlib line styles and markers: mechanisms stay apart in greyscale prints too.
MECHANISM_LINESTYLES = {"ER": "-", "IP": "--", "EX": ":"}
MECHANISM_MARKERS = {"ER": "o", "IP": "s", "EX": "^"}
