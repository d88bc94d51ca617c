"""Train a face-identity recogniser on SynthFace (ArcFace loss) and export it as insightface ONNX.

    python tools/train_face_recognizer.py --help

The command is ``unif2ace.commands.train_face_recognizer`` (also installed as ``unif2ace-train-face-recognizer``).
"""
import sys

from unif2ace.commands.train_face_recognizer import main

if __name__ == "__main__":
    sys.exit(main())
