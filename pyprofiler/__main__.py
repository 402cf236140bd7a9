"""`python -m pyprofiler run ...`: see pyprofiler/runner.py."""

import sys

from pyprofiler.runner import main

if __name__ == "__main__":
    sys.exit(main())
