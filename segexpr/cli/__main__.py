"""``python -m segexpr.cli ...``: the same as the ``segexpr`` console command."""
import sys

from segexpr.cli import main

sys.exit(main())
