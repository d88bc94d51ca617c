"""Render the SynthFace data set (procedural faces + dense captions + VQA + identities).

    python tools/make_synthface.py --help

The command is ``unif2ace.commands.make_synthface`` (also installed as ``unif2ace-make-synthface``).
"""
import sys

from unif2ace.commands.make_synthface import main

if __name__ == "__main__":
    sys.exit(main())
