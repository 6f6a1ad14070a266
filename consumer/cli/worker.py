"""`klein-edit worker`: consume edit requests, edit on the GPU, write outputs to S3, publish results.

The runtime itself is `consumer.app` (`build_worker`, `serve`); this module is its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from consumer.cli.command import CommandFailed, add_command, configured
from pipeline.config import DEFAULT_MODEL, TINY_RANDOM
from pipeline.errors import ModelLoadError
from pipeline.moderation.settings import DEFAULT_IMAGE_CLASSIFIER, TINY_IMAGE_CLASSIFIER

EPILOG = f"""\
variables that matter (all KLEIN_EDIT_* are listed in README.md, "Configuration"):
  KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS   brokers, host:port[,host:port] (default 127.0.0.1:9092)
  KLEIN_EDIT_S3__INPUT_BUCKET           where inputs are read; required on AWS
  KLEIN_EDIT_S3__OUTPUT_BUCKET          where outputs are written; required on AWS
  KLEIN_EDIT_S3__ENDPOINT_URL           an S3-compatible endpoint (default: AWS)
  KLEIN_EDIT_PIPELINE__MODEL            a Hub id in the local cache, a directory, or {TINY_RANDOM}
                                        (default {DEFAULT_MODEL})
  KLEIN_EDIT_PIPELINE__DEVICE           auto, cpu or cuda (default auto)
  KLEIN_EDIT_WORKER__HTTP_PORT          /livez, /readyz, /metrics; 1-65535, 0 picks a free one (logged
                                        as http.listening), off serves none (default 8080)
  KLEIN_EDIT_MODERATION__MODEL          the moderation classifier, loaded with the editor (default
                                        {DEFAULT_IMAGE_CLASSIFIER}); __ENABLED=false turns it off
  KLEIN_EDIT_WORKER__MAX_EDITS          recycle after this many records (also __MAX_RSS_MB,
                                        __MAX_GPU_RESERVED_MB; default 0: never)
The worker never downloads weights: run `klein-edit fetch-model` first (it needs HF_TOKEN; it fetches
the moderation classifier too), or use KLEIN_EDIT_PIPELINE__MODEL={TINY_RANDOM} and
KLEIN_EDIT_MODERATION__MODEL={TINY_IMAGE_CLASSIFIER} for random weights on the CPU. SIGTERM drains the
edit in flight. Exit status: 0 stopped, 2 configuration, 3 a model or classifier cannot load, 4 Kafka
or S3 refused or unreachable, 70 the GPU is unusable, 75 recycled (restart it)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers,
        "worker",
        "consume edit requests and run them on the GPU until SIGTERM",
        description="Consume edit requests from Kafka, edit on the GPU, write outputs to S3 and publish "
        "results, until SIGTERM (the edit in flight is finished first, up to "
        "KLEIN_EDIT_WORKER__DRAIN_GRACE_S, default 300 s).",
        epilog=EPILOG,
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from consumer.app import build_worker, install_signal_handlers, serve
    from consumer.http.health import PortUnavailable
    from consumer.worker import KafkaAccessDenied
    from pipeline.signing import SigningSetupError

    settings = configured(args)

    async def serve_until_stopped() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await serve(build_worker(settings), stop)

    try:
        code = asyncio.run(serve_until_stopped())
    except ModelLoadError as exc:
        raise CommandFailed(f"cannot load the model: {exc}") from exc
    except SigningSetupError as exc:
        raise CommandFailed(f"cannot sign outputs: {exc}") from exc
    except KafkaAccessDenied as exc:
        raise CommandFailed(str(exc)) from exc
    except PortUnavailable as exc:
        raise CommandFailed(
            f"the health endpoint {exc} (another `klein-edit worker` on this machine?); set "
            "KLEIN_EDIT_WORKER__HTTP_PORT to a free port, 0 to pick a free one, or off to serve no "
            "/livez, /readyz, /metrics"
        ) from exc
    return _exit_promptly(code)


def _exit_promptly(code: int) -> int:
    """Exit now: the GPU lane's daemon thread may still be inside an abandoned edit, and tearing the
    interpreter down under a running CUDA kernel can crash; I/O threads may sit in an S3 timeout."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
