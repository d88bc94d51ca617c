"""SynthFace: procedural faces with fine-grained attributes, dense captions and VQA pairs.

The built-in data set, rendered with PIL/NumPy in milliseconds per image so the whole
pipeline runs on a laptop. Its taxonomy mirrors UniF²aceD-1M's (docs/design.md §5):
hair, beard, accessories, skin, make-up, face shape, eyes and expression.

    import numpy as np
    from unif2ace import synthface as sf
    face = sf.sample_face(seed=0, index=0)              # identity, attributes, geometry
    img = sf.render_face(face.attributes, 64, np.random.default_rng(face.render_seed),
                         face.geometry)                 # PIL.Image, 64×64 RGB
    caption, mentioned = sf.make_caption(face.attributes, np.random.default_rng(1))
    qa = sf.make_qa(face.attributes, np.random.default_rng(2))
    sf.attributes_in_text(caption)                      # {category: value} named in text
    sf.write_dataset("data/synthface", num=1000)        # what tools/make_synthface.py runs

Modules: ``taxonomy`` (categories, identities, sampling, splits), ``render`` (PIL drawing),
``text`` (captions, VQA, parsing attributes back from text), ``dataset`` (the on-disk
layout, ``write_dataset``). Their public names are re-exported here.

Identities: an identity fixes face shape, skin tone, eye colour, hair colour/length/type,
baldness, eyebrow shape, freckles, wrinkles and hidden geometry (feature spacing, sizes,
exact tints); each identity is rendered ``per_identity`` times with different expression,
accessories, facial hair and make-up. Splits are by identity. Everything is a pure
function of (seed, image index), so any worker count writes byte-identical files.
"""
from .dataset import SynthFaceConfig, contact_sheet, make_record, write_dataset
from .render import render_face
from .taxonomy import (CATEGORIES, IDENTITY_CATEGORIES, TAXONOMY, Category, Face, chance_level,
                       hidden_categories, sample_face, sample_geometry, sample_identity, split_of,
                       taxonomy_json, validate_attributes)
from .text import (NOUN_GROUPS, PHRASES, answer_from_attributes, attributes_in_text, is_synthface_question,
                   make_caption, make_qa)

__all__ = [
    "CATEGORIES", "IDENTITY_CATEGORIES", "NOUN_GROUPS", "PHRASES", "TAXONOMY", "Category", "Face",
    "SynthFaceConfig", "answer_from_attributes", "attributes_in_text", "chance_level", "contact_sheet",
    "hidden_categories", "is_synthface_question", "make_caption", "make_qa", "make_record", "render_face", "sample_face", "sample_geometry",
    "sample_identity", "split_of", "taxonomy_json", "validate_attributes", "write_dataset",
]
