"""Weight memory per placement profile at the real 9B dims, computed on the meta device (no allocation).

docs/operations.md's sizing table quotes these numbers; the last test keeps the two in step.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pipeline.config import PipelineSettings
from pipeline.tools.sizing import PROFILES, ProfileBytes, meta_components, profile_weight_bytes

GB = 1e9
OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


@pytest.fixture(scope="module")
def sizes() -> dict[str, ProfileBytes]:
    components = meta_components()
    assert all(p.device.type == "meta" for m in components.values() for p in m.parameters())
    return {
        name: profile_weight_bytes(PipelineSettings(**opts), components) for name, opts in PROFILES.items()
    }


def test_the_9b_components_have_their_published_sizes() -> None:
    components = meta_components()
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}
    assert params["transformer"] / 1e9 == pytest.approx(9.08, abs=0.01)
    assert params["text_encoder"] / 1e9 == pytest.approx(8.19, abs=0.01)
    assert params["vae"] / 1e6 == pytest.approx(84, abs=1)


def test_bf16_holds_both_models(sizes: dict[str, ProfileBytes]) -> None:
    default = sizes["bf16 (default)"]
    assert default.resident / GB == pytest.approx(34.7, abs=0.1)
    assert default.host == 0


def test_low_memory_profiles_fit_24_gb_while_loading(sizes: dict[str, ProfileBytes]) -> None:
    for name in ("float8 transformer + float8 text encoder", "float8 transformer + text encoder on the CPU"):
        profile = sizes[name]
        # Placed and quantized one piece at a time: the peak is never two bf16 copies of a component.
        assert profile.peak_while_loading < 24 * GB, name
    offload = sizes["float8 transformer + text encoder on the CPU"]
    assert offload.host / GB == pytest.approx(16.4, abs=0.1)


def test_loading_peak_is_one_piece_above_the_placed_weights(sizes: dict[str, ProfileBytes]) -> None:
    # Quantizing a whole bf16 component after moving it would peak at its full bf16 size on top of what
    # was already placed: 16.4 GB (text encoder, float8) + 18.2 GB (transformer, bf16) > 24 GB.
    both = sizes["float8 transformer + float8 text encoder"]
    assert both.peak_while_loading - both.resident < 1 * GB


def test_operations_sizing_table_quotes_these_numbers(sizes: dict[str, ProfileBytes]) -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    for name, profile in sizes.items():
        row = re.search(
            rf"^\| {re.escape(name)} \| ([0-9.]+) GB \| ([0-9.]+) GB \| ([0-9.]+) GB \|", text, re.M
        )
        assert row is not None, f"docs/operations.md has no sizing row for {name!r}"
        quoted = [float(value) for value in row.groups()]
        computed = [round(v / GB, 1) for v in (profile.resident, profile.peak_while_loading, profile.host)]
        assert quoted == computed, name


def test_meta_build_allocates_nothing() -> None:
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    meta_components()
    after = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    assert after == before


def test_placement_pieces_cover_every_tensor_exactly_once() -> None:
    from pipeline.loader import placement_parts

    for name, module in meta_components().items():
        seen: list[int] = []
        for _prefix, part, recurse in placement_parts(module):
            seen += [id(t) for t in (*part.parameters(recurse=recurse), *part.buffers(recurse=recurse))]
        expected = [id(t) for t in (*module.parameters(), *module.buffers())]
        assert sorted(seen) == sorted(expected), name
