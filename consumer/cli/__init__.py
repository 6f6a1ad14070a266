"""The `klein-edit` command line, kept apart from the worker runtime it starts.

`main` is the console script (`klein-edit`, `python -m consumer`): it builds the parser from the
command modules and turns failures into exit statuses. Each command has its own module with
`add_parser` and `run` (`worker`, `demo`, `dev`, `submit`, `cancel`, `schema`, `fetch_model`, `dlq`,
`bench`), sharing `command`; `local_client`, `local_services`, `asyncapi` and the `*_bench` modules are
what they run. The worker runtime lives in `consumer.app` and below; nothing there imports this package.
"""

from consumer.cli.main import main

__all__ = ["main"]
