"""SynthFace language: dense captions, VQA pairs, and reading attributes back from text.

    import numpy as np
    from unif2ace.synthface.text import attributes_in_text, make_caption, make_qa
    caption, mentioned = make_caption(attrs, np.random.default_rng(0))
    assert attributes_in_text(caption) == mentioned
    qa = make_qa(attrs, np.random.default_rng(1))  # [{"q", "a", "category", "kind"}]
    assert all(answer_from_attributes(x["q"], attrs) == x["a"] for x in qa)

One lexicon (``NOUN_GROUPS`` + ``PHRASES``) serves both generation and parsing, so
``attributes_in_text`` recovers every attribute a caption mentions; the evaluator uses it
for caption attribute recall/precision on model outputs. ``answer_from_attributes`` is
``make_qa`` read backwards: any reader of attributes (an attribute classifier on real or
decoded faces) answers the VQA questions, which puts a ceiling beside a model's VQA.
"""
from __future__ import annotations

import re

import numpy as np

from .taxonomy import TAXONOMY, _choice, hidden_categories

# =========================================================================== language

# Adjectives that describe a noun ("long, wavy blonde hair", "their eyes are green").
# Each word maps to one value; the same word may mean different things for different
# nouns ("brown" eyes / skin / hair), which is why they are grouped by noun.
NOUN_GROUPS: dict[str, tuple[tuple[str, ...], dict[str, dict[str, tuple[str, ...]]]]] = {
    "hair": (("hair",), {
        "hair_colour": {"black": ("black", "jet-black", "raven-black"),
                        "brown": ("brown", "chestnut", "brunette"),
                        "blonde": ("blonde", "blond", "golden"),
                        "red": ("red", "ginger", "auburn"),
                        "grey": ("grey", "gray", "silver")},
        "hair_length": {"short": ("short", "cropped", "close-cropped"),
                        "medium": ("medium-length", "chin-length", "mid-length"),
                        "long": ("long",)},
        "hair_type": {"straight": ("straight", "sleek"), "wavy": ("wavy", "loosely-waved"),
                      "curly": ("curly", "coily", "tightly-curled")},
    }),
    "eyes": (("eyes",), {
        "eye_colour": {"brown": ("brown", "dark-brown", "chocolate-brown"),
                       "blue": ("blue", "sky-blue", "bright-blue"),
                       "green": ("green", "emerald", "emerald-green"),
                       "grey": ("grey", "gray", "steel-grey")},
    }),
    "skin": (("skin", "complexion"), {
        "skin_tone": {"pale": ("pale", "porcelain", "ivory"), "fair": ("fair", "light"),
                      "tan": ("tan", "tanned", "olive"), "brown": ("brown", "bronze", "medium-brown"),
                      "dark": ("dark", "deep", "ebony")},
    }),
    "face": (("face",), {
        "face_shape": {"oval": ("oval", "oval-shaped"), "round": ("round", "rounded", "circular"),
                       "square": ("square", "square-shaped", "angular"),
                       "heart": ("heart-shaped",)},
    }),
    "brows": (("eyebrows", "brows"), {
        "eyebrow_shape": {"straight": ("straight", "flat", "level"),
                          "arched": ("arched", "curved", "high-arched"),
                          "angled": ("angled", "peaked", "sharply-angled")},
    }),
}
_NOUN_OF_CATEGORY = {cat: g for g, (_, cats) in NOUN_GROUPS.items() for cat in cats}

# Set phrases for every other category value ("no glasses", "a goatee", "smiling").
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "bangs": {"yes": ("bangs", "a fringe", "a full fringe", "a blunt fringe"),
              "no": ("no bangs", "no fringe")},
    "bald": {"yes": ("a bald head", "a bald crown", "a shaved-looking bald scalp")},
    "beard": {"full": ("a full beard", "a thick beard", "a bushy beard"),
              "goatee": ("a goatee", "a pointed goatee", "a chin goatee"),
              "none": ("no beard",)},
    "moustache": {"yes": ("a moustache", "a mustache", "a thick moustache"),
                  "no": ("no moustache", "no mustache")},
    "five_o_clock_shadow": {"yes": ("a five o'clock shadow", "light stubble", "stubble along the jaw"),
                            "no": ("no stubble", "no five o'clock shadow")},
    "sideburns": {"yes": ("sideburns", "long sideburns", "prominent sideburns"),
                  "no": ("no sideburns",)},
    "glasses": {"round": ("round glasses", "round spectacles", "round-rimmed glasses"),
                "rectangular": ("rectangular glasses", "rectangular spectacles",
                                "thick rectangular frames"),
                "sunglasses": ("sunglasses", "dark sunglasses", "a pair of sunglasses"),
                "none": ("no glasses", "no eyewear")},
    "hat": {"cap": ("a baseball cap", "a cap", "a peaked cap"),
            "beanie": ("a beanie", "a knitted beanie", "a woolly beanie"),
            "fedora": ("a fedora", "a brimmed fedora", "a wide-brimmed fedora"),
            "none": ("no hat", "no headwear")},
    "earrings": {"yes": ("earrings", "gold earrings", "gold hoop earrings", "hoop earrings"),
                 "no": ("no earrings",)},
    "necklace": {"yes": ("a necklace", "a gold necklace", "a pendant necklace"),
                 "no": ("no necklace",)},
    "mask": {"surgical": ("a surgical mask", "a blue surgical mask", "a medical face mask"),
             "cloth": ("a cloth mask", "a black cloth mask", "a dark fabric face mask"),
             "none": ("no face mask", "no mask")},
    "freckles": {"yes": ("freckles", "a sprinkling of freckles", "freckled cheeks"),
                 "no": ("no freckles",)},
    "wrinkles": {"yes": ("wrinkles", "visible wrinkles", "fine wrinkles and smile lines"),
                 "no": ("no wrinkles", "no visible wrinkles")},
    "rosy_cheeks": {"yes": ("rosy cheeks", "flushed cheeks", "blushing pink cheeks"),
                    "no": ("no rosy cheeks", "no blush")},
    "lipstick": {"red": ("red lipstick", "bright red lipstick"),
                 "pink": ("pink lipstick", "soft pink lipstick"),
                 "plum": ("plum lipstick", "dark plum lipstick", "berry-coloured lipstick"),
                 "none": ("no lipstick",)},
    "expression": {"neutral": ("a neutral expression", "a calm, neutral expression",
                               "a relaxed, neutral look"),
                   "smile": ("a smile", "a gentle smile", "a warm smile", "smiling"),
                   "laugh": ("a hearty laugh", "an open-mouthed laugh", "laughing"),
                   "surprised": ("a surprised expression", "a look of surprise", "surprised",
                                 "astonished")},
}
_SHAVEN = "clean-shaven"  # one phrase, three categories
_WEAR = {"glasses", "hat", "earrings", "necklace", "mask", "lipstick"}
_VERB_FORMS = {"smile": "smiling", "laugh": "laughing", "surprised": "surprised"}


def _phrase_index() -> tuple[re.Pattern, dict[str, dict[str, str]]]:
    table: dict[str, dict[str, str]] = {_SHAVEN: {"beard": "none", "moustache": "no",
                                                  "five_o_clock_shadow": "no"}}
    for cat, vals in PHRASES.items():
        for val, phrases in vals.items():
            for p in phrases:
                if p in table and table[p] != {cat: val}:
                    raise AssertionError(f"phrase {p!r} is ambiguous")
                table[p] = {cat: val}
    alts = sorted(table, key=len, reverse=True)  # longest first: "no glasses" before "glasses"
    pat = re.compile(r"(?<![a-z'-])(?:" + "|".join(re.escape(p) for p in alts) + r")(?![a-z'-])")
    return pat, table


_PHRASE_RE, _PHRASE_TABLE = _phrase_index()
_TOKEN_RE = re.compile(r"[a-z][a-z'-]*|[^\sa-z]")
_CONNECT = {",", "and"}
_COPULA = {"is", "are", "looks", "look", "appears", "appear", "seems", "seem"}
_PRED_SKIP = _CONNECT | {"cut", "worn", "kept", "styled", "both", "quite"}


def attributes_in_text(text: str) -> dict[str, str]:
    """Attribute values a caption mentions, as ``{category: value}`` (first mention wins).

    Finds the set phrases of ``PHRASES`` (longest first, so "no glasses" is not read as
    glasses) and adjectives attached to a noun of ``NOUN_GROUPS``, before it ("long, wavy
    blonde hair") or after a copula ("their eyes are green"). Used by the evaluator for
    caption attribute recall/precision.
    """
    text = text.lower()
    found: dict[str, str] = {}
    spans = []
    for m in _PHRASE_RE.finditer(text):
        for cat, val in _PHRASE_TABLE[m.group(0)].items():
            found.setdefault(cat, val)
        spans.append(m.span())
    for a, b in reversed(spans):  # blank matched phrases so their words are not re-read
        text = text[:a] + " " * (b - a) + text[b:]
    toks = _TOKEN_RE.findall(text)
    noun_of = {n: g for g, (nouns, _) in NOUN_GROUPS.items() for n in nouns}
    for i, tok in enumerate(toks):
        group = noun_of.get(tok)
        if group is None:
            continue
        words = {w: (cat, val) for cat, vals in NOUN_GROUPS[group][1].items()
                 for val, ws in vals.items() for w in ws}
        j = i - 1
        while j >= 0 and (toks[j] in words or toks[j] in _CONNECT):
            if toks[j] in words:
                found.setdefault(*words[toks[j]])
            j -= 1
        j = i + 1
        while j < len(toks) and toks[j] in {"that", "which"}:
            j += 1
        if j < len(toks) and toks[j] in _COPULA:
            j += 1
            while j < len(toks) and (toks[j] in words or toks[j] in _PRED_SKIP):
                if toks[j] in words:
                    found.setdefault(*words[toks[j]])
                j += 1
    return found


def _join(items: list[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    last = " and " if len(items) == 2 or rng.random() < 0.75 else ", and "
    return ", ".join(items[:-1]) + last + items[-1]


_SUBJECTS = (("The person", "has", "wears", "is wearing", "is", "looks"),
             ("This person", "has", "wears", "is wearing", "is", "looks"),
             ("The subject", "has", "wears", "is wearing", "is", "looks"),
             ("They", "have", "wear", "are wearing", "are", "look"))
_POSSESSIVE = ("Their", "The person's", "The subject's")
_OPENERS = ("A close-up portrait of a person with {}.", "This image shows a person with {}.",
            "A headshot of someone with {}.", "A frontal face photo of a person with {}.",
            "Pictured is a person with {}.")


def make_caption(attrs: dict[str, str], rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """Dense caption and the attributes it mentions (``{category: value}``).

    Every visible identity trait and expression, every present per-image attribute, and
    each absent one with probability 1/2; fragments are shuffled and grouped into
    sentences with varied subjects, verbs and synonyms.
    """
    hidden = hidden_categories(attrs)
    frags: list[tuple[str, str, dict[str, str]]] = []  # (verb kind, text, mentioned)

    def vis(c: str) -> bool:
        return c not in hidden

    def adj(cat: str) -> str:
        g = _NOUN_OF_CATEGORY[cat]
        return _choice(rng, NOUN_GROUPS[g][1][cat][attrs[cat]])

    poss = _choice(rng, _POSSESSIVE)
    # hair
    if attrs["bald"] == "yes":
        frags.append(("have", f"{_choice(rng, PHRASES['bald']['yes'])} with {adj('hair_colour')} hair "
                      f"{_choice(rng, ('at the sides', 'around the ears', 'on the sides'))}",
                      {"bald": "yes", "hair_colour": attrs["hair_colour"]}))
    else:
        ws = {c: adj(c) for c in ("hair_length", "hair_type", "hair_colour")}
        hair_m = {c: attrs[c] for c in ws}
        style = rng.random()
        if style < 0.4:
            frags.append(("have", f"{ws['hair_length']}, {ws['hair_type']} {ws['hair_colour']} hair", hair_m))
        elif style < 0.65:
            frags.append(("have", f"{ws['hair_colour']} hair that is {ws['hair_length']} and {ws['hair_type']}",
                          hair_m))
        else:
            order = list(ws.values())
            rng.shuffle(order)
            frags.append(("sentence", f"{poss} hair is {_join(order, rng)}.", hair_m))
    # face, skin, eyes, brows: attributive or predicative
    for cat, noun, plural in (("face_shape", "face", False), ("skin_tone", "skin", False),
                              ("eye_colour", "eyes", True), ("eyebrow_shape", "eyebrows", True)):
        if not vis(cat):
            continue
        word = adj(cat)
        if cat == "skin_tone" and rng.random() < 0.4:
            noun = "complexion"
        if rng.random() < 0.3:
            frags.append(("sentence", f"{poss} {noun} {'are' if plural else 'is'} {word}.", {cat: attrs[cat]}))
        else:
            art = "" if plural or noun == "skin" else ("an " if word[0] in "aeio" else "a ")
            frags.append(("have", f"{art}{word} {noun}", {cat: attrs[cat]}))
    # expression
    e = attrs["expression"]
    if e in _VERB_FORMS and rng.random() < 0.4:
        frags.append(("looks" if e == "surprised" else "is", _VERB_FORMS[e], {"expression": e}))
    else:
        ph = [p for p in PHRASES["expression"][e] if not p.endswith("ing") and p not in ("surprised", "astonished")]
        frags.append(("have", _choice(rng, ph), {"expression": e}))
    # facial hair
    shaven = all(attrs[c] in ("none", "no") for c in ("beard", "moustache", "five_o_clock_shadow"))
    if shaven and vis("beard") and rng.random() < 0.6:
        frags.append(("is", _SHAVEN, {"beard": "none", "moustache": "no", "five_o_clock_shadow": "no"}))
    else:
        for c in ("beard", "moustache", "five_o_clock_shadow"):
            _presence_frag(c, attrs, rng, frags, hidden)
    for c in ("sideburns", "bangs", "freckles", "wrinkles", "rosy_cheeks", "glasses", "hat",
              "earrings", "necklace", "mask", "lipstick"):
        _presence_frag(c, attrs, rng, frags, hidden)

    frags = [frags[i] for i in rng.random(len(frags)).argsort()]  # random attribute order
    sentences, mentioned = [], {}
    # the opener takes the first one or two "have" fragments
    lead = [i for i, f in enumerate(frags) if f[0] == "have" and not f[1].startswith("no ")]
    lead = lead[: 1 + int(rng.random() < 0.5)]
    if lead:
        sentences.append(_choice(rng, _OPENERS).format(_join([frags[i][1] for i in lead], rng)))
        for i in lead:
            mentioned.update(frags[i][2])
        frags = [f for i, f in enumerate(frags) if i not in lead]
    i = 0
    while i < len(frags):
        if frags[i][0] == "sentence":
            group = [frags[i]]
        else:  # 2-4 fragments in one sentence, one verb phrase per kind
            k = 2 + int(rng.random() * 3)
            group = []
            while i + len(group) < len(frags) and len(group) < k and frags[i + len(group)][0] != "sentence":
                group.append(frags[i + len(group)])
        for f in group:
            mentioned.update(f[2])
        sentences.append(_sentence(group, rng))
        i += len(group)
    return " ".join(sentences), mentioned


def _presence_frag(cat: str, attrs: dict[str, str], rng: np.random.Generator,
                   frags: list, hidden: set[str]) -> None:
    """Fragment for a presence-type category: always when present, else half the time."""
    if cat in hidden:
        return
    v = attrs[cat]
    absent = v == TAXONOMY[cat].values[0]
    if absent and rng.random() < 0.5:
        return
    kind = "wear" if cat in _WEAR else "have"
    frags.append((kind, _choice(rng, PHRASES[cat][v]), {cat: v}))


def _sentence(group: list[tuple[str, str, dict]], rng: np.random.Generator) -> str:
    """One sentence from fragments: a verb phrase per fragment kind, one shared subject."""
    if group[0][0] == "sentence":
        return group[0][1]
    subj, has, wears, wearing, is_, looks = _choice(rng, _SUBJECTS)
    by_kind: dict[str, list[str]] = {}
    for kind, text, _ in group:
        by_kind.setdefault(kind, []).append(text)
    if list(by_kind) == ["have"] and not any(t.startswith("no ") for t in by_kind["have"]) \
            and rng.random() < 0.25:
        return f"Also visible: {_join(by_kind['have'], rng)}."
    verbs = {"have": _choice(rng, (has, has, "also " + has)), "wear": _choice(rng, (wears, wearing)),
             "is": is_, "looks": looks}
    clauses = [f"{verbs[k]} {_join(v, rng)}" for k, v in by_kind.items()]
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"{subj} {body}."


# --------------------------------------------------------------------------- QA

_OPEN_Q = {
    "hair_colour": ("What colour is the person's hair?", "What is the hair colour?",
                    "Which colour is their hair?"),
    "hair_length": ("How long is the person's hair?", "What is the length of their hair?"),
    "hair_type": ("Is the hair straight, wavy or curly?", "What texture is the person's hair?"),
    "eye_colour": ("What colour are the person's eyes?", "What is the eye colour?"),
    "skin_tone": ("What is the person's skin tone?", "How would you describe the skin tone?"),
    "face_shape": ("What shape is the face?", "What is the person's face shape?"),
    "eyebrow_shape": ("What shape are the eyebrows?", "How are the eyebrows shaped?"),
    "expression": ("What is the person's facial expression?", "What expression does the person have?"),
    "glasses": ("What kind of glasses is the person wearing?",),
    "hat": ("What kind of hat is the person wearing?", "What type of headwear is shown?"),
    "beard": ("What style of beard does the person have?",),
    "lipstick": ("What colour is the lipstick?",),
    "mask": ("What type of mask is the person wearing?",),
}
_PRESENCE_Q = {
    "bald": "Is the person bald?", "bangs": "Does the person have bangs?",
    "beard": "Does the person have a beard?", "moustache": "Does the person have a moustache?",
    "five_o_clock_shadow": "Does the person have a five o'clock shadow?",
    "sideburns": "Does the person have sideburns?", "glasses": "Is the person wearing glasses?",
    "hat": "Is the person wearing a hat?", "earrings": "Is the person wearing earrings?",
    "necklace": "Is the person wearing a necklace?", "mask": "Is the person wearing a face mask?",
    "freckles": "Does the person have freckles?", "wrinkles": "Does the face show wrinkles?",
    "rosy_cheeks": "Does the person have rosy cheeks?", "lipstick": "Is the person wearing lipstick?",
}
_VALUE_Q = {  # yes/no about one specific value
    "hair_colour": "Is the person's hair {}?", "hair_type": "Is the person's hair {}?",
    "hair_length": "Is the person's hair {}?", "eye_colour": "Are the person's eyes {}?",
    "skin_tone": "Is the person's skin tone {}?", "face_shape": "Does the person have a {} face?",
    "eyebrow_shape": "Are the eyebrows {}?", "glasses": "Is the person wearing {}?",
    "hat": "Is the person wearing {}?", "mask": "Is the person wearing {}?",
    "expression": "Is the person {}?", "lipstick": "Is the person wearing {}?",
}
_VALUE_WORD = {
    ("hair_length", "medium"): "medium-length", ("face_shape", "heart"): "heart-shaped",
    ("glasses", "round"): "round glasses", ("glasses", "rectangular"): "rectangular glasses",
    ("glasses", "sunglasses"): "sunglasses", ("hat", "cap"): "a cap", ("hat", "beanie"): "a beanie",
    ("hat", "fedora"): "a fedora", ("mask", "surgical"): "a surgical mask",
    ("mask", "cloth"): "a cloth mask", ("expression", "neutral"): "expressionless",
    ("expression", "smile"): "smiling", ("expression", "laugh"): "laughing",
    ("expression", "surprised"): "surprised", ("lipstick", "red"): "red lipstick",
    ("lipstick", "pink"): "pink lipstick", ("lipstick", "plum"): "plum lipstick",
}


def make_qa(attrs: dict[str, str], rng: np.random.Generator, n_min: int = 8,
            n_max: int = 12) -> list[dict[str, str]]:
    """Between ``n_min`` and ``n_max`` question/answer pairs about visible attributes.

    Open questions ("What colour is the person's hair?" → "blonde") and yes/no ones
    (presence, or one specific value, asked with the true value half the time); at
    least three of each kind.
    """
    hidden = hidden_categories(attrs)
    opens, yesno = [], []
    for cat, qs in _OPEN_Q.items():
        v = attrs[cat]
        if cat in hidden or v in ("none", "no"):
            continue  # "what kind of hat" only when there is one
        opens.append({"q": _choice(rng, qs), "a": v, "category": cat, "kind": "open"})
    for cat, q in _PRESENCE_Q.items():
        if cat in hidden:
            continue
        present = attrs[cat] not in ("none", "no")
        yesno.append({"q": q, "a": "yes" if present else "no", "category": cat, "kind": "yesno"})
    for cat, q in _VALUE_Q.items():
        if cat in hidden:
            continue
        vals = [v for v in TAXONOMY[cat].values if v not in ("none", "no")]
        v = attrs[cat] if (attrs[cat] in vals and rng.random() < 0.5) else _choice(rng, vals)
        yesno.append({"q": q.format(_VALUE_WORD.get((cat, v), v)), "a": "yes" if v == attrs[cat] else "no",
                      "category": cat, "kind": "yesno"})
    n = n_min + int(rng.random() * (n_max - n_min + 1))
    n_open = 3 + int(rng.random() * (min(len(opens), n - 3) - 2))
    u = rng.random(len(opens) + len(yesno) + n)  # one draw for all three shuffles
    pick_o = u[:len(opens)].argsort()[:n_open]
    pick_y = u[len(opens):len(opens) + len(yesno)].argsort()[: n - n_open]
    out = [opens[i] for i in pick_o] + [yesno[i] for i in pick_y]
    return [out[i] for i in u[-len(out):].argsort()]


def _question_index() -> dict[str, tuple[str, str, str | None]]:
    """Every question ``make_qa`` can ask → (category, kind, value asked about or None)."""
    pairs = [(q, (cat, "open", None)) for cat, qs in _OPEN_Q.items() for q in qs]
    pairs += [(q, (cat, "presence", None)) for cat, q in _PRESENCE_Q.items()]
    pairs += [(q.format(_VALUE_WORD.get((cat, v), v)), (cat, "value", v)) for cat, q in _VALUE_Q.items()
              for v in TAXONOMY[cat].values if v not in ("none", "no")]
    out = dict(pairs)
    if len(out) != len(pairs):  # one wording for two questions would make the answer ambiguous
        raise AssertionError("SynthFace asks two different questions with the same words")
    return out


_QUESTIONS = _question_index()


def is_synthface_question(question: str) -> bool:
    """Whether ``make_qa`` can ask ``question`` (so ``answer_from_attributes`` answers it)."""
    return question in _QUESTIONS


def _lookup(question: str) -> tuple[str, str, str | None]:
    try:
        return _QUESTIONS[question]
    except KeyError:
        raise KeyError(f"not a SynthFace question: {question!r}") from None


def question_kind(question: str) -> str:
    """The kind of a ``make_qa`` question: open, presence (is the attribute there at all) or value
    (does it have this one value)."""
    return _lookup(question)[1]


def answer_from_attributes(question: str, attrs: dict[str, str]) -> str:
    """The answer ``make_qa`` gives to ``question`` about a face with attributes ``attrs``."""
    cat, kind, value = _lookup(question)
    if kind == "open":
        return attrs[cat]
    if kind == "presence":
        return "no" if attrs[cat] in ("none", "no") else "yes"
    return "yes" if attrs[cat] == value else "no"
