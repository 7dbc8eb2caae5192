"""`python -m radixpert` (and `accelerate launch -m radixpert train ...`) runs the CLI."""

import sys

from radixpert.cli import main

if __name__ == "__main__":
    sys.exit(main())
