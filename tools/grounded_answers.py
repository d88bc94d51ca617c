"""Copy precomputed shards with each yes/no answer preceded by the attribute it rests on (a diagnostic).

    python tools/grounded_answers.py --help

The command is ``unif2ace.commands.grounded_answers`` (also installed as ``unif2ace-grounded-answers``).
"""
import sys

from unif2ace.commands.grounded_answers import main

if __name__ == "__main__":
    sys.exit(main())
