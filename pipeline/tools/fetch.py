"""Downloading the model weights into the Hugging Face cache (`klein-edit fetch-model`).

This is the only place that talks to the Hub. `snapshot_download` is idempotent and resumes partial
downloads, so re-running after an interruption is the fix for most failures; the messages say so.
"""

from __future__ import annotations

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from pipeline.errors import ModelLoadError

# Only what Flux2KleinPipeline.from_pretrained reads; skips e.g. original single-file checkpoints.
ALLOW_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.jinja", "*/*.model"]


def fetch_model(
    model: str,
    *,
    cache_dir: str | None,
    token: str | None,
    revision: str | None,
    endpoint: str | None = None,
    allow_patterns: list[str] | None = None,
) -> str:
    """Download (or complete) `model` in the cache and return the local snapshot directory.

    `endpoint` overrides the Hub URL (a mirror, or an unreachable address in tests); `allow_patterns`
    the files fetched (default: a diffusers pipeline's configs, safetensors weights and tokenizer).
    """
    where = f"{model}" + (f"@{revision}" if revision else "")
    try:
        path = snapshot_download(
            repo_id=model,
            revision=revision,
            cache_dir=cache_dir,
            token=token or None,
            endpoint=endpoint,
            allow_patterns=allow_patterns or ALLOW_PATTERNS,
        )
    except GatedRepoError as exc:
        raise ModelLoadError(
            f"{where}: the model is gated ({_status(exc)}): accept its licence on the Hub page with your "
            "account, then set HF_TOKEN to a token of that account and run fetch-model again"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelLoadError(f"{where}: revision {revision!r} does not exist on the Hub") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"{where}: repository not found or not accessible ({_status(exc)}); check the id, and for a "
            "gated model accept its licence on the Hub and set HF_TOKEN"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{where}: cannot reach the Hub ({exc.__cause__ or exc}); check the network or proxy, then run "
            "fetch-model again (it resumes)"
        ) from exc
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in ("401", "403"):
            raise ModelLoadError(
                f"{where}: {status}: access denied; the model is gated: accept its licence on the Hub and "
                "set HF_TOKEN to a token with read access"
            ) from exc
        raise ModelLoadError(f"{where}: download failed ({status}): {exc}; run fetch-model again") from exc
    except OSError as exc:
        raise ModelLoadError(
            f"{where}: download failed: {exc}; check free disk space and the cache directory "
            f"({cache_dir or 'default HF cache'}), then run fetch-model again (it resumes)"
        ) from exc
    if not isinstance(path, str):  # pragma: no cover - only a dry run returns file infos
        raise ModelLoadError(f"{where}: unexpected snapshot_download result {type(path).__name__}")
    return path


def _status(exc: HfHubHTTPError) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return str(code) if code is not None else "no HTTP status"
