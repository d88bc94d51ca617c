"""Train a SentencePiece text tokenizer on a data set's captions and QA text.

    python tools/train_text_tokenizer.py --data data/synthface --out runs/synthface/spm.model
    python tools/train_text_tokenizer.py --data data/ffhq --source ffhq_source.yaml \
        --vocab-size 4096 --split "" --out runs/ffhq/spm.model

Captions and questions/answers are written exactly as the precompute step tokenizes them
(``unif2ace.tokenizers.text.QUESTION_TEMPLATE``), plus the captioning prompts. Ids: unk=0,
bos=1, eos=2 (the ``synthface`` recipe's bos_id / eos_id), no pad piece; the vocabulary has
exactly ``--vocab-size`` pieces (= the recipe's ``model.text_vocab_size``, default 1024;
ids the corpus cannot fill are reserved UNUSED pieces). BPE with byte fallback by default.
Deterministic: the same data gives the same file byte for byte.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


from unif2ace.data.sources import SourceConfig, load_records, texts_for_tokenizer
from unif2ace.tokenizers.text import TextTokenizer, train_sentencepiece


def source_config(data: str, source_yaml: str | None) -> SourceConfig:
    """SourceConfig from an optional YAML mapping, with ``root`` set to ``data`` when given."""
    raw = {}
    if source_yaml:
        raw = yaml.safe_load(Path(source_yaml).read_text()) or {}
        if not isinstance(raw, dict):
            raise SystemExit(f"{source_yaml}: expected a mapping of SourceConfig fields")
    if data:
        raw["root"] = data
    if not raw.get("root"):
        raise SystemExit("give --data DIR (or root: in --source YAML)")
    return SourceConfig.from_dict(raw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="data set root (SynthFace layout unless --source maps columns)")
    ap.add_argument("--source", default=None, help="YAML with SourceConfig fields (column mapping)")
    ap.add_argument("--split", default="train", help="split whose text is used ('' = all splits)")
    ap.add_argument("--vocab-size", type=int, default=1024, help="pieces in the vocabulary (= model.text_vocab_size)")
    ap.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"], help="SentencePiece algorithm")
    ap.add_argument("--no-byte-fallback", action="store_true", help="map unseen characters to <unk> instead of bytes")
    ap.add_argument("--out", required=True, help="output .model file (written atomically)")
    args = ap.parse_args(argv)

    cfg = source_config(args.data, args.source)
    records = load_records(cfg, split=args.split or None)
    if not records:
        raise SystemExit(f"{cfg.root}: no records in split {args.split!r}")
    out = train_sentencepiece(texts_for_tokenizer(records), args.out, args.vocab_size, args.model_type,
                              byte_fallback=not args.no_byte_fallback)
    tok = TextTokenizer.load(out)
    unused = sum(tok.impl.is_unused(i) for i in range(tok.vocab_size))
    print(f"wrote {out}: vocab_size={tok.vocab_size} ({unused} reserved unused) bos_id={tok.bos_id} "
          f"eos_id={tok.eos_id} from {len(records)} records; hash {tok.config_hash()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
