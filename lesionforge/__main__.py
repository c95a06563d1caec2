"""``python -m lesionforge``: the ``lesionforge`` command (`downstream.cli.main`)."""

import sys

from downstream.cli import main

if __name__ == "__main__":
    sys.exit(main())
