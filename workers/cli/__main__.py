"""`python -m workers.cli`: the same as the `ourvidz-worker` command."""

import sys

from workers.cli.main import main

sys.exit(main())
