"""The XMP marking: what it says, where each format carries it, and that it keeps outputs deterministic."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image

from pipeline.images import encode_image
from pipeline.marking import OutputMarking, xmp_packet
from schemas.provenance import DIGITAL_SOURCE_TYPE_EDIT
from schemas.requests import OutputFormat

MARKING = OutputMarking(
    request_id="sku-1.blue",
    model="black-forest-labs/FLUX.2-klein-base-9B",
    revision="a" * 40,
    software="klein-edit 1",
)


def description(data: bytes) -> dict[str, str]:
    image = Image.open(BytesIO(data))
    image.load()
    xmp = image.getxmp()  # Pillow's own reader (defusedxml)
    result: dict[str, str] = xmp["xmpmeta"]["RDF"]["Description"]
    return result


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_each_format_carries_the_packet_where_pillow_reads_it(fmt: OutputFormat) -> None:
    packet = xmp_packet(MARKING)
    data = encode_image(Image.new("RGB", (64, 48), (30, 144, 255)), fmt, xmp=packet)
    image = Image.open(BytesIO(data))
    image.load()
    assert image.info["xmp"] == packet
    assert "icc_profile" in image.info  # the sRGB profile stays
    found = description(data)
    assert found["DigitalSourceType"] == DIGITAL_SOURCE_TYPE_EDIT
    assert found["RequestId"] == "sku-1.blue"
    assert found["Model"] == found["AISystemUsed"] == "black-forest-labs/FLUX.2-klein-base-9B"
    assert found["ModelRevision"] == found["AISystemVersionUsed"] == "a" * 40
    assert found["CreatorTool"] == "klein-edit 1"
    # Deterministic: nothing in the packet depends on time.
    assert data == encode_image(Image.new("RGB", (64, 48), (30, 144, 255)), fmt, xmp=xmp_packet(MARKING))


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_without_a_packet_there_is_no_xmp(fmt: OutputFormat) -> None:
    image = Image.open(BytesIO(encode_image(Image.new("RGB", (64, 48)), fmt)))
    image.load()
    assert "xmp" not in image.info


def test_values_are_escaped() -> None:
    marking = OutputMarking(request_id="r", model='/models/a&b "x" <y>', revision="r", software="s")
    data = encode_image(Image.new("RGB", (64, 64)), OutputFormat.PNG, xmp=xmp_packet(marking))
    assert description(data)["Model"] == '/models/a&b "x" <y>'
