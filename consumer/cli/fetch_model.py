"""`klein-edit fetch-model`: download the model into the Hugging Face cache, or write the tiny one.

Workers never download weights (they load from the local cache, without network access); this is the
step that puts them there. `--tiny-random DIR` writes the offline random-weight model instead.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from consumer.cli.command import NO_S3, CommandFailed, add_command, configured
from pipeline.config import DEFAULT_MODEL, TINY_RANDOM
from pipeline.errors import ModelLoadError

if TYPE_CHECKING:
    from consumer.settings import Settings

EPILOG = f"""\
variables:
  HF_TOKEN (or KLEIN_EDIT_PIPELINE__HF_TOKEN)  a Hugging Face token; the default model is gated:
                                    accept its licence on the Hub first
  KLEIN_EDIT_PIPELINE__MODEL        the Hub id (default {DEFAULT_MODEL})
  KLEIN_EDIT_PIPELINE__REVISION     a branch, tag or commit (default: main)
  KLEIN_EDIT_PIPELINE__CACHE_DIR    the Hugging Face cache (default: HF_HOME/hub, ~/.cache/huggingface/hub)
  KLEIN_EDIT_MODERATION__MODEL      the moderation classifier, fetched too while moderation is on
                                    (default Falconsai/nsfw_image_detection); __TEXT_MODEL likewise
Resumable: run it again after an interruption. Prints each local snapshot directory."""


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
    parser.add_argument(
        "--moderation",
        action="store_true",
        help="fetch only the moderation classifiers (KLEIN_EDIT_MODERATION__MODEL and __TEXT_MODEL), not "
        "the editing model (default: both, while moderation is on)",
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
        if not args.moderation:
            if p.model == TINY_RANDOM:
                from pipeline.loader import locate_model

                print(locate_model(p))  # written into the cache on first use
            else:
                print(fetch_model(p.model, cache_dir=p.cache_dir, token=token, revision=p.revision))
        if settings.moderation.enabled or args.moderation:
            for path in _fetch_classifiers(settings, token):
                print(path)
    except ModelLoadError as exc:
        raise CommandFailed(str(exc)) from exc
    return 0


def _fetch_classifiers(settings: Settings, token: str | None) -> list[str]:
    """The moderation classifiers' snapshot directories, fetched where they are Hub ids (a local directory
    or a tiny name needs nothing; a tiny one is written on first use)."""
    import os

    from pipeline.moderation import FETCH_PATTERNS
    from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER, TINY_TEXT_CLASSIFIER
    from pipeline.tools.fetch import fetch_model

    m = settings.moderation
    found: list[str] = []
    for model, revision in ((m.model, m.revision), (m.text_model, m.text_revision)):
        if model is None or model in (TINY_IMAGE_CLASSIFIER, TINY_TEXT_CLASSIFIER) or os.path.isdir(model):
            continue
        found.append(
            fetch_model(
                model,
                cache_dir=settings.pipeline.cache_dir,
                token=token,
                revision=revision,
                allow_patterns=list(FETCH_PATTERNS),
            )
        )
    return found
