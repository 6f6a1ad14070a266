"""The wiring: Kafka in, the pipeline on the GPU thread, S3 out, and the `klein-edit` command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("klein-edit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
