"""`python -m exportctl` runs the command line."""

import sys

from exportctl.cli import main

sys.exit(main())
