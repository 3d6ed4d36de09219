"""Per-class signatures of the synthetic MoSAiC benchmark (see :mod:`mosaic_edge.data.synthetic`).

Numbers are plausible rather than fitted: S2 endmember spectra follow textbook L2A surface reflectance curves
(vegetation: low red, red-edge rise, NIR plateau, SWIR water absorption; soil rising to SWIR; water dark
beyond green; sand bright and flat) in units of reflectance x 1e4, and S1 backscatter levels are typical
C-band GRD values in dB (forest volume scattering VH ~ -14 dB, calm water < -20 dB, urban double bounce VV ~
-5 dB).
"""

from __future__ import annotations

import numpy as np

# Endmember spectra, bands in S2_BANDS order: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12.
ENDMEMBERS: dict[str, tuple[float, ...]] = {
    "broadleaf": (250, 300, 620, 330, 1000, 2900, 3500, 3800, 3950, 3900, 1850, 850),
    "conifer": (200, 220, 420, 230, 650, 1650, 1950, 2150, 2250, 2250, 1000, 450),
    "grass": (330, 400, 780, 520, 1250, 2650, 3100, 3300, 3400, 3400, 2300, 1300),
    "soil": (900, 1000, 1300, 1600, 1850, 2100, 2300, 2450, 2600, 2600, 3300, 2700),
    "urban": (1100, 1150, 1220, 1280, 1420, 1560, 1650, 1700, 1750, 1750, 1950, 1750),
    "water": (320, 460, 520, 320, 260, 180, 150, 120, 100, 100, 50, 30),
    "sand": (1500, 1700, 2100, 2500, 2700, 2900, 3000, 3100, 3200, 3200, 3800, 3300),
}
_EM = list(ENDMEMBERS)

# Per class (BENV2_CLASSES order): S2 endmember mixture, S2 brightness texture (log-std), S1 (VV dB, VH dB,
# texture std in dB). The deliberately confusable pairs:
#   S2 ~ equal, S1 differs:  urban fabric / industrial; pastures / natural grassland; moors / transitional
#                            woodland; inland waters / marine waters.
#   S1 ~ equal, S2 differs:  broad-leaved / coniferous / mixed forest; arable / permanent crops / complex
#                            cultivation; agriculture+natural / agro-forestry; inland / coastal wetlands;
#                            beaches / inland waters.
# fmt: off
CLASS_TABLE: tuple[tuple[dict[str, float], float, tuple[float, float, float]], ...] = (
    # S2 mixture                                        S2 tex  S1 VV, VH, tex
    ({"urban": .75, "grass": .15, "broadleaf": .10},            .25, (-5.0, -12.0, 3.5)),   # Urban fabric
    ({"urban": .76, "grass": .15, "broadleaf": .09},            .25, (-7.0, -17.5, 2.5)),   # Industrial
    ({"soil": .50, "grass": .50},                               .15, (-11.0, -18.0, 1.2)),  # Arable land
    ({"broadleaf": .35, "soil": .45, "grass": .20},             .12, (-10.8, -17.7, 1.3)),  # Permanent crops
    ({"grass": .85, "soil": .10, "broadleaf": .05},             .07, (-14.5, -22.0, 0.8)),  # Pastures
    ({"grass": .40, "soil": .30, "broadleaf": .20, "urban": .10}, .18, (-11.2, -18.2, 1.4)),  # Complex
    ({"grass": .40, "broadleaf": .30, "conifer": .10, "soil": .20}, .12, (-10.0, -16.5, 1.5)),  # Agri+nat
    ({"broadleaf": .40, "sand": .20, "grass": .40},             .12, (-9.8, -16.3, 1.6)),   # Agro-forestry
    ({"broadleaf": .95, "grass": .05},                          .08, (-8.0, -13.5, 1.0)),   # Broad-leaved
    ({"conifer": .95, "grass": .05},                            .08, (-8.2, -13.7, 1.0)),   # Coniferous
    ({"broadleaf": .50, "conifer": .50},                        .08, (-8.1, -13.6, 1.0)),   # Mixed forest
    ({"grass": .84, "soil": .11, "broadleaf": .05},             .07, (-9.5, -16.0, 2.2)),   # Nat. grassland
    ({"conifer": .30, "grass": .40, "soil": .30},               .10, (-13.0, -20.0, 1.5)),  # Moors, heath
    ({"conifer": .30, "grass": .41, "soil": .29},               .10, (-9.5, -15.5, 1.3)),   # Transitional
    ({"sand": .85, "water": .10, "grass": .05},                 .06, (-19.5, -27.0, 1.0)),  # Beaches
    ({"grass": .55, "water": .30, "broadleaf": .15},            .12, (-7.5, -17.0, 2.0)),   # Inland wetlands
    ({"water": .55, "soil": .30, "grass": .15},                 .12, (-7.7, -17.2, 2.0)),   # Coastal wetl.
    ({"water": 1.0},                                            .03, (-20.0, -27.5, 0.8)),  # Inland waters
    ({"water": 1.0},                                            .03, (-13.0, -22.0, 0.7)),  # Marine waters
)
# fmt: on

# Landscape contexts: class sampling weights (co-occurrence like the real archive, where e.g. marine water
# comes with beaches and coastal wetlands, and coniferous with mixed forest).
CONTEXTS: tuple[dict[int, float], ...] = (
    {2: 3, 4: 2, 5: 2, 6: 1.5, 0: 0.7, 8: 1, 17: 0.3, 3: 0.7, 1: 0.3, 7: 0.3},  # agricultural
    {9: 3, 10: 2.5, 8: 2, 13: 2, 17: 0.7, 15: 0.5, 4: 0.5, 6: 0.8, 12: 0.5},  # forest
    {0: 3, 1: 2, 2: 1, 4: 0.7, 5: 0.7, 8: 0.5, 17: 0.4, 11: 0.3},  # urban
    {18: 3, 14: 1.5, 16: 1.5, 0: 0.7, 4: 0.7, 2: 0.7, 11: 0.5, 17: 0.3},  # coastal
    {11: 2, 12: 2, 13: 1.5, 9: 1.5, 14: 0.2, 17: 0.7, 15: 1, 10: 0.5},  # mountain / natural
    {3: 2.5, 7: 1.5, 12: 1.5, 5: 1.5, 2: 1, 6: 1, 11: 0.5, 0: 0.4},  # mediterranean
)
CONTEXT_PROBS = (0.3, 0.25, 0.12, 0.1, 0.13, 0.1)

# Cloud top reflectance (bright, flat in VNIR, lower in SWIR) and how much a cloud shadow darkens the ground.
CLOUD_SPECTRUM = (5600, 5900, 5700, 5800, 5900, 6000, 6000, 6000, 6000, 5200, 4000, 2800)
SHADOW_DARKENING = 0.6


def class_arrays(num_classes: int = 19) -> dict[str, np.ndarray]:
    """The class table as arrays: ``mix`` [C, E], ``endmembers`` [E, 12], ``s2`` [C, 12], ``s2_tex`` [C],
    ``s1`` [C, 2] (VV, VH dB), ``s1_tex`` [C], ``veg`` [C] (vegetated fraction), ``context`` [K, C]."""
    if num_classes != len(CLASS_TABLE):
        raise ValueError(f"the synthetic benchmark defines {len(CLASS_TABLE)} classes, not {num_classes}")
    mix = np.zeros((len(CLASS_TABLE), len(_EM)))
    for c, (weights, _, _) in enumerate(CLASS_TABLE):
        for name, w in weights.items():
            mix[c, _EM.index(name)] = w
    mix /= mix.sum(1, keepdims=True)
    ends = np.array([ENDMEMBERS[e] for e in _EM], dtype=np.float64)
    context = np.zeros((len(CONTEXTS), len(CLASS_TABLE)))
    for k, context_weights in enumerate(CONTEXTS):
        for c, cw in context_weights.items():
            context[k, c] = cw
    veg = mix[:, [_EM.index("broadleaf"), _EM.index("conifer"), _EM.index("grass")]].sum(1)
    return {
        "mix": mix,
        "endmembers": ends,
        "s2": mix @ ends,
        "s2_tex": np.array([row[1] for row in CLASS_TABLE]),
        "s1": np.array([row[2][:2] for row in CLASS_TABLE]),
        "s1_tex": np.array([row[2][2] for row in CLASS_TABLE]),
        "veg": veg,
        "context": context / context.sum(1, keepdims=True),
        "context_p": np.asarray(CONTEXT_PROBS) / sum(CONTEXT_PROBS),
        "cloud": np.asarray(CLOUD_SPECTRUM, dtype=np.float64),
        "green_dir": ends[_EM.index("grass")] - ends[_EM.index("soil")],
    }
