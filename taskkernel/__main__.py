"""`python -m taskkernel` is the `taskkernel` command."""

import sys

from taskkernel.cli import main

sys.exit(main())
