"""`python -m services.cli ...`: the `fleet` command (how `fleet up --detach` re-executes)."""

import sys

from services.cli import main

sys.exit(main())
