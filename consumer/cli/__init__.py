"""The `klein-edit` command line, kept apart from the worker runtime it starts.

`main` is the console script (`klein-edit`, `python -m consumer`) and wires every command; each command's
own module holds what only that command does (`submit`, `demo`, `dev`, `dlq`, `bench`). The worker
runtime lives in `consumer.app` and below; nothing there imports this package.
"""

from consumer.cli.main import main

__all__ = ["main"]
