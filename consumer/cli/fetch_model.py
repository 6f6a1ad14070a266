"""`klein-edit fetch-model`: download the model into the Hugging Face cache, or write the tiny one.

Workers never download weights (they load from the local cache, without network access); this is the
step that puts them there. `--tiny-random DIR` writes the offline random-weight model instead.
"""

from __future__ import annotations

import argparse

from consumer.cli.command import NO_S3, CommandFailed, add_command, configured
from pipeline.config import DEFAULT_MODEL, TINY_RANDOM
from pipeline.errors import ModelLoadError

EPILOG = f"""\
variables:
  HF_TOKEN (or KLEIN_EDIT_PIPELINE__HF_TOKEN)  a Hugging Face token; the default model is gated:
                                    accept its licence on the Hub first
  KLEIN_EDIT_PIPELINE__MODEL        the Hub id (default {DEFAULT_MODEL})
  KLEIN_EDIT_PIPELINE__REVISION     a branch, tag or commit (default: main)
  KLEIN_EDIT_PIPELINE__CACHE_DIR    the Hugging Face cache (default: HF_HOME/hub, ~/.cache/huggingface/hub)
Resumable: run it again after an interruption. Prints the local snapshot directory."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers,
        "fetch-model",
        "download the model weights into the Hugging Face cache (needs HF_TOKEN)",
        description="Download the configured model into the Hugging Face cache, so that workers load it "
        "without network access.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--tiny-random",
        metavar="DIR",
        help="instead of downloading: write the offline tiny random-weight model (the same classes as the "
        "real one; for demos and tests) to directory DIR as a diffusers model directory; "
        "KLEIN_EDIT_PIPELINE__MODEL=DIR then loads it like any local model; a directory is treated as a "
        "real model and needs CUDA, so without a GPU also set KLEIN_EDIT_PIPELINE__DEVICE=cpu (default: "
        "not used)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.tools.fetch import fetch_model

    if args.tiny_random:
        from pipeline.tiny import write_tiny_model

        print(write_tiny_model(args.tiny_random))
        return 0
    settings = configured(args, **NO_S3)
    p = settings.pipeline
    token = p.hf_token.get_secret_value() if p.hf_token else None
    try:
        if p.model == TINY_RANDOM:
            from pipeline.loader import locate_model

            path = str(locate_model(p))  # written into the cache on first use
        else:
            path = fetch_model(p.model, cache_dir=p.cache_dir, token=token, revision=p.revision)
    except ModelLoadError as exc:
        raise CommandFailed(str(exc)) from exc
    print(path)
    return 0
