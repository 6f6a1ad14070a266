"""`python -m consumer`: the same command line as the `klein-edit` console script."""

import sys

from consumer.cli import main

sys.exit(main())
