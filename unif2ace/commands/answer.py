"""Understanding: answer questions about (or caption) a face image, KV-cache decoding.

    python launchers/answer.py --checkpoint runs/synthface/model --image face.png \
        --question "What colour is the person's hair?"
    python launchers/answer.py --checkpoint runs/synthface/model --image face.png --caption

The image's tokens and CLIP / face / noise features are computed here with the encoders that
made the training shards (their manifest, ``--shards``). Prints one answer per question.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="model directory or DeepSpeed checkpoint directory")
    ap.add_argument("--shards", default=None, help="training shard directory (tokenizers / encoders)")
    ap.add_argument("--image", required=True, help="an image file")
    ap.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    ap.add_argument("--caption", action="store_true", help="ask for a detailed caption")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from PIL import Image, ImageOps, UnidentifiedImageError

    from unif2ace.inference.assets import load_assets
    from unif2ace.inference.batch import answer_questions
    from unif2ace.tokenizers.text import CAPTION_PROMPTS

    questions = list(args.question) + ([CAPTION_PROMPTS[0]] if args.caption else [])
    if not questions:
        print("error: give --question and/or --caption", file=sys.stderr)
        return 2
    try:
        with Image.open(args.image) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        print(f"error: {args.image}: cannot read image: {e}", file=sys.stderr)
        return 2
    try:
        assets = load_assets(args.checkpoint, args.shards, args.device)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    answers = answer_questions(assets, [image] * len(questions), questions, [Path(args.image).stem] * len(questions))
    for q, a in zip(questions, answers):
        print(f"Q: {q}\nA: {a}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
