"""`python -m kagglecv ...`: the same command as `kagglecv ...` (used where a subprocess must run this
interpreter's kagglecv: fold workers, torchrun ranks, the tests)."""

import os
import sys

from kagglecv.cli import main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
