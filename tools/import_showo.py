"""Import a local ``microsoft/phi-1_5``-format or Show-o checkpoint directory into ours.

    python tools/import_showo.py --help

The command is ``unif2ace.commands.import_showo`` (also installed as ``unif2ace-import-showo``).
"""
import sys

from unif2ace.commands.import_showo import main

if __name__ == "__main__":
    sys.exit(main())
