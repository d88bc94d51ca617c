"""SynthFace taxonomy and sampling: categories, identities, per-image attributes, splits.

    from unif2ace.synthface.taxonomy import CATEGORIES, sample_face
    face = sample_face(seed=0, index=5)     # Face(index, identity, attributes, geometry, ...)
    [c.name for c in CATEGORIES if c.identity_fixed]

The taxonomy mirrors UniF²aceD-1M's groups (docs/design.md §5). Sampling is a pure
function of (seed, index): identity traits come from an rng keyed on (seed, identity),
per-image traits from one keyed on (seed, index). Public names are re-exported by
``unif2ace.synthface``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# =========================================================================== taxonomy


@dataclass(frozen=True)
class Category:
    """One attribute category of the taxonomy."""

    name: str
    """Key in an image's ``attributes`` mapping."""
    values: tuple[str, ...]
    """Possible values; the first is the default/absent one for presence-type categories."""
    identity_fixed: bool
    """True when every image of one identity shares the value."""
    group: str
    """Paper taxonomy group (hair, beard, accessories, skin, makeup, face, eyes, emotion)."""
    description: str
    """What the category means and how it is drawn."""


CATEGORIES: tuple[Category, ...] = (
    Category("hair_colour", ("black", "brown", "blonde", "red", "grey"), True, "hair",
             "Colour of the hair (also tints eyebrows and facial hair)."),
    Category("hair_length", ("none", "short", "medium", "long"), True, "hair",
             "Short: a cap above the ears; medium: to the jaw; long: past the shoulders. "
             "'none' only for bald people."),
    Category("hair_type", ("none", "straight", "wavy", "curly"), True, "hair",
             "Texture: vertical strands, wavy strands and edges, or curls and a bumpy "
             "outline. 'none' only for bald people."),
    Category("bangs", ("no", "yes"), False, "hair", "A fringe covering the forehead."),
    Category("bald", ("no", "yes"), True, "hair",
             "Bald crown; hair only above the ears at the sides."),
    Category("beard", ("none", "full", "goatee"), False, "beard",
             "Full beard along the jaw, or a goatee on the chin."),
    Category("moustache", ("no", "yes"), False, "beard", "Moustache above the upper lip."),
    Category("five_o_clock_shadow", ("no", "yes"), False, "beard",
             "Stubble: a dark tint over jaw, chin and upper lip."),
    Category("sideburns", ("no", "yes"), False, "beard",
             "Hair strips in front of the ears (only with short hair or baldness)."),
    Category("glasses", ("none", "round", "rectangular", "sunglasses"), False, "accessories",
             "Thin round frames, thick rectangular frames, or dark opaque lenses."),
    Category("hat", ("none", "cap", "beanie", "fedora"), False, "accessories",
             "Baseball cap with a brim, knitted beanie with a cuff and bobble, or a fedora "
             "with a wide brim and band."),
    Category("earrings", ("no", "yes"), False, "accessories", "Gold hoop earrings."),
    Category("necklace", ("no", "yes"), False, "accessories", "Gold chain with a pendant."),
    Category("mask", ("none", "surgical", "cloth"), False, "accessories",
             "Light-blue pleated surgical mask or dark cloth mask over nose and mouth."),
    Category("skin_tone", ("pale", "fair", "tan", "brown", "dark"), True, "skin",
             "Skin colour."),
    Category("freckles", ("no", "yes"), True, "skin", "Brown dots on cheeks and nose."),
    Category("wrinkles", ("no", "yes"), True, "skin",
             "Forehead lines, crow's feet and smile lines."),
    Category("rosy_cheeks", ("no", "yes"), False, "skin", "Pink blush on the cheeks."),
    Category("lipstick", ("none", "red", "pink", "plum"), False, "makeup", "Lip colour."),
    Category("face_shape", ("oval", "round", "square", "heart"), True, "face",
             "Outline: long ellipse, near-circle, boxy jaw, or wide brow with pointed chin."),
    Category("eye_colour", ("brown", "blue", "green", "grey"), True, "eyes", "Iris colour."),
    Category("eyebrow_shape", ("straight", "arched", "angled"), True, "eyes",
             "Flat brows, a smooth arch, or a sharp peak."),
    Category("expression", ("neutral", "smile", "laugh", "surprised"), False, "emotion",
             "Neutral; smile (upturned mouth); laugh (open mouth with teeth, squinting "
             "eyes); surprised (round open mouth, wide eyes, raised brows)."),
)
TAXONOMY: dict[str, Category] = {c.name: c for c in CATEGORIES}
IDENTITY_CATEGORIES = tuple(c.name for c in CATEGORIES if c.identity_fixed)


def chance_level(category: str) -> float:
    """Accuracy of a uniform random guess over the category's values."""
    return 1.0 / len(TAXONOMY[category].values)


def taxonomy_json() -> dict[str, Any]:
    """The taxonomy as written to ``attributes.json``."""
    return {
        "version": 1,
        "categories": [
            {"name": c.name, "values": list(c.values), "identity_fixed": c.identity_fixed,
             "group": c.group, "description": c.description}
            for c in CATEGORIES
        ],
    }


def validate_attributes(attrs: dict[str, str]) -> None:
    """Raise ValueError naming the first missing category or unknown value."""
    for c in CATEGORIES:
        if c.name not in attrs:
            raise ValueError(f"attributes lack category {c.name!r}")
        if attrs[c.name] not in c.values:
            raise ValueError(f"{c.name}={attrs[c.name]!r} is not one of {c.values}")


def hidden_categories(attrs: dict[str, str]) -> set[str]:
    """Categories whose value cannot be seen in the rendered image (occluded or moot).

    Captions and QA never mention these, so a model is not taught to guess them.
    """
    hidden = set()
    if attrs["glasses"] == "sunglasses":
        hidden.add("eye_colour")
    if attrs["bald"] == "yes":
        hidden |= {"hair_length", "hair_type"}
    if attrs["mask"] != "none":
        hidden |= {"lipstick", "moustache", "beard", "five_o_clock_shadow"}
    return hidden


# =========================================================================== sampling


@dataclass
class Face:
    """One sampled image: who, what, and the seeds that make it reproducible."""

    index: int
    """Image index in the data set (0-based)."""
    identity: int
    """Identity id; images of one identity share the identity-fixed attributes."""
    attributes: dict[str, str]
    """Ground truth, one value per category of ``CATEGORIES``."""
    geometry: dict[str, float] = field(default_factory=dict)
    """Hidden per-identity shape parameters (feature spacing, sizes, tints)."""
    render_seed: int = 0
    """Seed of the rendering rng (pose jitter, background and clothing colours)."""


def _pick(rng: np.random.Generator, values: Sequence[str], probs: Sequence[float]) -> str:
    # Inverse-CDF on one uniform: ~20x cheaper than Generator.choice(p=...) per call.
    u, acc = rng.random() * sum(probs), 0.0
    for v, p in zip(values, probs):
        acc += p
        if u < acc:
            return v
    return values[-1]


def _choice(rng: np.random.Generator | float, seq: Sequence[Any]) -> Any:
    """Uniform pick; ``rng`` may be a Generator or an already drawn uniform in [0, 1)."""
    u = rng if isinstance(rng, float) else rng.random()
    return seq[int(u * len(seq))]


def sample_geometry(rng: np.random.Generator) -> dict[str, float]:
    """Hidden identity shape: spacing and size of features and small colour offsets."""
    u = rng.uniform
    return {
        "face_w": u(0.45, 0.50), "aspect": u(0.96, 1.04), "eye_dx": u(0.20, 0.235),
        "eye_y": u(0.46, 0.50), "eye_w": u(0.12, 0.14), "nose_w": u(0.05, 0.08),
        "mouth_y": u(0.78, 0.82), "mouth_w": u(0.14, 0.18), "brow_dy": u(0.15, 0.18),
        "skin_r": u(-8, 8), "skin_g": u(-8, 8), "skin_b": u(-8, 8),
        "hair_l": u(0.9, 1.1), "iris_l": u(0.9, 1.1),
    }


def sample_identity(seed: int, identity: int) -> tuple[dict[str, str], dict[str, float], dict[str, float]]:
    """Identity-fixed attributes, hidden geometry and hidden traits (age, presentation).

    Hidden traits only bias probabilities (older → grey hair and wrinkles; presentation →
    facial hair versus make-up), so attribute combinations look plausible.
    """
    rng = np.random.default_rng([seed, 0, identity])
    age, femme = rng.random(), float(rng.random() < 0.5)
    a: dict[str, str] = {}
    a["hair_colour"] = ("grey" if age > 0.82 and rng.random() < 0.8
                        else _pick(rng, ("black", "brown", "blonde", "red", "grey"),
                                   (0.3, 0.3, 0.2, 0.12, 0.08)))
    a["bald"] = "yes" if rng.random() < (0.02 if femme else 0.06 + 0.2 * age) else "no"
    if a["bald"] == "yes":
        a["hair_length"], a["hair_type"] = "none", "none"
    else:
        a["hair_length"] = _pick(rng, ("short", "medium", "long"),
                                 (0.2, 0.35, 0.45) if femme else (0.6, 0.3, 0.1))
        a["hair_type"] = _pick(rng, ("straight", "wavy", "curly"), (0.4, 0.3, 0.3))
    a["skin_tone"] = _pick(rng, TAXONOMY["skin_tone"].values, (1, 1, 1, 1, 1))
    a["face_shape"] = _pick(rng, TAXONOMY["face_shape"].values, (1, 1, 1, 1))
    a["eye_colour"] = _pick(rng, TAXONOMY["eye_colour"].values, (0.35, 0.25, 0.2, 0.2))
    a["eyebrow_shape"] = _pick(rng, TAXONOMY["eyebrow_shape"].values, (1, 1, 1))
    # Freckles are drawn (and in life mostly visible) on lighter skin only.
    p_freckles = {"pale": 0.4, "fair": 0.4, "tan": 0.2}.get(a["skin_tone"], 0.0)
    a["freckles"] = "yes" if rng.random() < p_freckles + (0.15 if a["hair_colour"] == "red" else 0) else "no"
    a["wrinkles"] = "yes" if age > 0.65 else "no"
    return a, sample_geometry(rng), {"age": float(age), "femme": femme}


def sample_face(seed: int, index: int, per_identity: int = 4) -> Face:
    """Sample image ``index``: its identity's fixed attributes plus per-image ones."""
    identity = index // per_identity
    a, geometry, hidden = sample_identity(seed, identity)
    femme = hidden["femme"] > 0.5
    rng = np.random.default_rng([seed, 1, index])
    r = rng.random
    a["mask"] = _pick(rng, ("none", "surgical", "cloth"), (0.88, 0.07, 0.05))
    masked = a["mask"] != "none"
    a["bangs"] = "yes" if a["bald"] == "no" and r() < 0.3 else "no"
    beard_p = (0.95, 0.03, 0.02) if femme else (0.5, 0.3, 0.2)
    a["beard"] = "none" if masked else _pick(rng, ("none", "full", "goatee"), beard_p)
    a["moustache"] = "yes" if not masked and r() < (
        0.03 if femme else (0.6 if a["beard"] != "none" else 0.3)) else "no"
    a["five_o_clock_shadow"] = "yes" if (not masked and a["beard"] != "full"
                                         and r() < (0.02 if femme else 0.35)) else "no"
    # In front of the ears medium/long hair already hangs: sideburns would be invisible.
    a["sideburns"] = "yes" if (a["hair_length"] in ("none", "short")
                               and r() < (0.1 if femme else 0.4)) else "no"
    a["glasses"] = _pick(rng, TAXONOMY["glasses"].values, (0.55, 0.15, 0.15, 0.15))
    # A hat would hide baldness.
    a["hat"] = "none" if a["bald"] == "yes" else _pick(
        rng, TAXONOMY["hat"].values, (0.58, 0.14, 0.14, 0.14))
    a["earrings"] = "yes" if r() < (0.55 if femme else 0.12) else "no"
    a["necklace"] = "yes" if r() < (0.4 if femme else 0.12) else "no"
    a["rosy_cheeks"] = "yes" if r() < 0.25 else "no"
    lip_p = (0.45, 0.2, 0.2, 0.15) if femme else (0.94, 0.02, 0.02, 0.02)
    a["lipstick"] = "none" if masked else _pick(rng, TAXONOMY["lipstick"].values, lip_p)
    # A mask hides the mouth; a smile would be invisible, laugh/surprise still show in the eyes.
    expr_p = (0.3, 0.0, 0.35, 0.35) if masked else (0.3, 0.3, 0.2, 0.2)
    a["expression"] = _pick(rng, TAXONOMY["expression"].values, expr_p)
    attrs = {c.name: a[c.name] for c in CATEGORIES}
    render_seed = int(rng.integers(0, 2**63 - 1))
    return Face(index, identity, attrs, geometry, render_seed)


def split_of(seed: int, identity: int, val_frac: float = 0.1, test_frac: float = 0.1) -> str:
    """Split of an identity (train/val/test), a pure function of (seed, identity)."""
    u = np.random.default_rng([seed, 3, identity]).random()
    return "test" if u < test_frac else "val" if u < test_frac + val_frac else "train"
