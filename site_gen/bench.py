"""`python -m site_gen bench`: an alias of `python -m refimpl bench` (the engine lives in refimpl/bench)."""
from __future__ import annotations

import sys

from refimpl.bench.engine import main

if __name__ == "__main__":
    sys.exit(main())
