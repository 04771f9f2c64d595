"""``python -m segexpr ...``: the same as the ``segexpr`` console command (DDP re-runs it for the other ranks)."""
import sys

from segexpr.cli import main

if __name__ == "__main__":
    sys.exit(main())
