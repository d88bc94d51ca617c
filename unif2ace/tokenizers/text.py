"""Text tokenizer: a Hugging Face tokenizer from a local directory, or a SentencePiece model.

    from unif2ace.tokenizers.text import TextTokenizer, train_sentencepiece
    tok = TextTokenizer.load("weights/phi-1_5")          # HF dir (AutoTokenizer, no remote code)
    tok = TextTokenizer.load("runs/synthface/spm.model")  # SentencePiece file
    ids = tok.encode("a woman with red hair")              # list[int], no special tokens
    tok.vocab_size, tok.bos_id, tok.eos_id                 # → model.text_vocab_size / bos_id / eos_id
    q = tok.encode_question("Is she smiling?")             # the MMU prompt format, see QUESTION_TEMPLATE

    train_sentencepiece(texts, "spm.model", vocab_size=1024)   # BPE; unk=0, bos=1, eos=2, no pad piece

``vocab_size`` is ``len(tokenizer)`` (added tokens included), the number of ids below which
``unif2ace.tokens`` puts text; the model's own [PAD] and specials come after it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from unif2ace.atomic import atomic_write_bytes

QUESTION_TEMPLATE = "USER: {q} ASSISTANT:"
"""How a question is written before tokenizing (training shards and MMU inference must agree)."""
ANSWER_TEMPLATE = " {a}"
"""How an answer is written before tokenizing (it follows the question's ``ASSISTANT:``)."""
GROUNDED_SEPARATOR = ","
"""Between what a grounded answer rests on and its verdict (evaluation scores what follows it)."""


def grounded_answer(answer: str, category: str, attrs: dict[str, str]) -> str:
    """A yes/no ``answer`` about ``category`` preceded by the attribute it rests on.

    "earrings, yes" / "none, no" for a presence question, "round, yes" for one about glasses,
    "black, no" for "Is the person's hair blonde?" (the face's value, then the verdict). The
    first word is then specific to the category, like an open answer's; ``precompute_tokens.py
    --grounded-answers`` and ``tools/grounded_answers.py`` write training answers this way.
    Open answers come back unchanged.
    """
    if answer not in ("yes", "no"):
        return answer
    v = attrs[category]
    said = "none" if v in ("none", "no") else category.replace("_", " ") if v == "yes" else v
    return f"{said}{GROUNDED_SEPARATOR} {answer}"


CAPTION_PROMPTS = (
    "Describe this face in detail.",
    "Write a detailed caption of this person's face.",
    "What does this person look like?",
    "Give a fine-grained description of the face in the image.",
)
"""Questions that turn captioning into an MMU turn (one is drawn per sample by the loader)."""

# SentencePiece ids chosen so the ``synthface`` recipe's bos_id=1, eos_id=2 hold; the model
# has its own [PAD] (tokens.py), so SentencePiece needs no pad piece.
SPM_UNK_ID, SPM_BOS_ID, SPM_EOS_ID = 0, 1, 2


class TextTokenizer:
    """One interface over HF tokenizers and SentencePiece. Build with :meth:`load`."""

    def __init__(self, kind: str, impl, source: str):
        self.kind = kind  # "hf" | "sentencepiece"
        self.impl = impl
        self.source = source
        if kind == "hf":
            bos = impl.bos_token_id if impl.bos_token_id is not None else impl.eos_token_id
            eos = impl.eos_token_id if impl.eos_token_id is not None else impl.bos_token_id
            if bos is None or eos is None:
                raise ValueError(f"{source}: tokenizer defines neither a bos nor an eos token")
            self.bos_id, self.eos_id = int(bos), int(eos)
            self.vocab_size = len(impl)
        else:
            self.bos_id, self.eos_id = impl.bos_id(), impl.eos_id()
            if self.bos_id < 0 or self.eos_id < 0:
                raise ValueError(f"{source}: SentencePiece model has no bos/eos piece (train with bos_id/eos_id set)")
            self.vocab_size = impl.get_piece_size()

    # ----------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextTokenizer":
        """A ``*.model`` SentencePiece file, a directory holding only one, or an HF tokenizer dir."""
        p = Path(path).expanduser()
        if p.is_file():
            return cls._sentencepiece(p)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such tokenizer file or directory")
        hf_files = [n for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json") if (p / n).is_file()]
        if not hf_files:
            spm = sorted(p.glob("*.model"))
            if len(spm) == 1:
                return cls._sentencepiece(spm[0])
            raise FileNotFoundError(f"{p}: neither a Hugging Face tokenizer (tokenizer.json / tokenizer_config.json) "
                                    f"nor exactly one SentencePiece *.model file")
        from transformers import AutoTokenizer

        # Local files only and never remote code: a tokenizer dir must not execute anything.
        impl = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)
        return cls("hf", impl, str(p.absolute()))

    @classmethod
    def _sentencepiece(cls, file: Path) -> "TextTokenizer":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.load(str(file))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{file}: not a SentencePiece model ({e})") from None
        return cls("sentencepiece", sp, str(file.absolute()))

    # ----------------------------------------------------------------- API

    def encode(self, text: str) -> list[int]:
        """Text → ids, without bos/eos (the sequence builders add <sot>/<eot>)."""
        if self.kind == "hf":
            return list(self.impl.encode(text, add_special_tokens=False))
        return list(self.impl.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids → text; special ids (bos/eos) are dropped."""
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self.impl.decode(ids, skip_special_tokens=True)
        return self.impl.decode([i for i in ids if i not in (self.bos_id, self.eos_id)])

    def encode_question(self, question: str) -> list[int]:
        return self.encode(QUESTION_TEMPLATE.format(q=question.strip()))

    def encode_answer(self, answer: str) -> list[int]:
        return self.encode(ANSWER_TEMPLATE.format(a=answer.strip()))

    def __len__(self) -> int:
        return self.vocab_size

    def config_hash(self) -> str:
        """sha256 of what determines the ids (the serialised tokenizer), not of file paths."""
        h = hashlib.sha256(self.kind.encode())
        if self.kind == "sentencepiece":
            h.update(self.impl.serialized_model_proto())
        else:
            backend = getattr(self.impl, "backend_tokenizer", None)
            if backend is not None:
                h.update(backend.to_str().encode())
            h.update(json.dumps(sorted(self.impl.get_vocab().items())).encode())
        h.update(f"{self.vocab_size}/{self.bos_id}/{self.eos_id}".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "vocab_size": self.vocab_size,
                "bos_id": self.bos_id, "eos_id": self.eos_id, "hash": self.config_hash(),
                "question_template": QUESTION_TEMPLATE, "answer_template": ANSWER_TEMPLATE}


def train_sentencepiece(texts: Iterable[str], out: str | os.PathLike, vocab_size: int = 1024,
                        model_type: str = "bpe", byte_fallback: bool = True) -> Path:
    """Train a SentencePiece model on ``texts`` and write it atomically to ``out``.

    The result has exactly ``vocab_size`` pieces (= the recipe's ``model.text_vocab_size``):
    a small corpus may not support that many merges, so any remaining ids become
    ``<unused_i>`` pieces of type UNUSED, which encoding never produces. BPE is the default:
    on SynthFace captions it needs ~25% fewer tokens than unigram (93 vs 124 per caption).
    ``byte_fallback`` spells characters unseen in training as UTF-8 byte pieces instead of
    <unk>. Ids: unk=0, bos=1, eos=2, no pad piece (the model has its own [PAD]).
    Deterministic: one thread, no input sampling or shuffling, so the same texts give the same
    file byte for byte.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    out = Path(out)
    texts = [t for t in (s.strip() for s in texts) if t]
    if not texts:
        raise ValueError("no non-empty text to train a SentencePiece model on")
    floor = 3 + (256 if byte_fallback else 0) + 1
    if vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size} is too small: needs at least {floor} "
                         f"(3 specials{' + 256 byte pieces' if byte_fallback else ''} + 1)")
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            unk_id=SPM_UNK_ID, bos_id=SPM_BOS_ID, eos_id=SPM_EOS_ID, pad_id=-1, byte_fallback=byte_fallback,
            character_coverage=1.0, num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
            hard_vocab_limit=False, minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"SentencePiece training for {out} failed ({len(texts)} texts, vocab_size={vocab_size}): {e}") from None
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    learned = len(proto.pieces)
    for i in range(vocab_size - learned):  # fill to the exact size the model config expects
        proto.pieces.add(piece=f"<unused_{i}>", score=0.0, type=pb.ModelProto.SentencePiece.UNUSED)
    if len(proto.pieces) != vocab_size:
        raise ValueError(f"SentencePiece produced {learned} pieces, more than vocab_size={vocab_size}")
    atomic_write_bytes(out, proto.SerializeToString())
    return out
