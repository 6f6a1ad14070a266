"""Colour spaces and CIEDE2000 against published reference values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.color.spaces import (
    delta_e00,
    hex_to_lab,
    hue_difference,
    linear_to_oklab,
    oklab_to_linear,
    oklab_to_oklch,
    oklch_to_oklab,
    parse_hex,
    srgb_to_lab,
    srgb_to_linear,
    to_hex,
    xyz_to_oklab,
)

# Sharma, Wu and Dalal, "The CIEDE2000 color-difference formula: implementation notes, supplementary
# test data, and mathematical observations", Color Res. Appl. 30(1), 2005, Table 1:
# L1, a1, b1, L2, a2, b2, ΔE00 (kL = kC = kH = 1).
SHARMA_2005 = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


def test_ciede2000_matches_sharma_wu_dalal_34_pairs() -> None:
    table = np.array(SHARMA_2005)
    assert table.shape == (34, 7)
    computed = delta_e00(table[:, 0:3], table[:, 3:6])
    np.testing.assert_allclose(computed, table[:, 6], rtol=0, atol=1e-4)
    # CIEDE2000 is symmetric in its two colours.
    np.testing.assert_allclose(delta_e00(table[:, 3:6], table[:, 0:3]), table[:, 6], rtol=0, atol=1e-4)


def test_kl_divides_a_lightness_difference() -> None:
    first, second = np.array([50.0, 20.0, -10.0]), np.array([60.0, 20.0, -10.0])
    assert float(delta_e00(first, second, kl=2.0)) == pytest.approx(float(delta_e00(first, second)) / 2)


def test_dodger_blue_in_cielab() -> None:
    np.testing.assert_allclose(hex_to_lab("#1E90FF"), [59.38, 9.95, -63.38], atol=0.05)
    image_lab = srgb_to_lab(np.full((2, 2, 3), (0x1E, 0x90, 0xFF), dtype=np.uint8))
    np.testing.assert_allclose(image_lab[0, 0], [59.38, 9.95, -63.38], atol=0.05)


@pytest.mark.parametrize(
    ("text", "rgb"), [("#1E90FF", (30, 144, 255)), ("1e90ff", (30, 144, 255)), (" #000000 ", (0, 0, 0))]
)
def test_parse_hex(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_hex(text) == rgb
    assert to_hex(rgb) == "#" + text.strip().lstrip("#").upper()


@pytest.mark.parametrize("text", ["#1E90F", "blue", "#GG0000", "#1E90FF00", ""])
def test_parse_hex_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="#RRGGBB"):
        parse_hex(text)


def test_oklab_matches_ottossons_reference_values() -> None:
    # Ottosson 2020, "A perceptual color space for image processing", table of XYZ -> OKLab test values.
    xyz = np.array([[0.950, 1.000, 1.089], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expected = np.array(
        [[1.000, 0.000, 0.000], [0.450, 1.236, -0.019], [0.922, -0.671, 0.263], [0.153, -1.415, -0.449]]
    )
    np.testing.assert_allclose(xyz_to_oklab(xyz), expected, atol=2e-3)


def test_oklab_round_trip_and_white() -> None:
    linear = srgb_to_linear(np.random.default_rng(0).integers(0, 256, (64, 3), dtype=np.uint8))
    np.testing.assert_allclose(oklab_to_linear(linear_to_oklab(linear)), linear, atol=1e-5)
    np.testing.assert_allclose(linear_to_oklab(np.ones(3)), [1.0, 0.0, 0.0], atol=1e-4)
    oklab = linear_to_oklab(linear)
    np.testing.assert_allclose(oklch_to_oklab(oklab_to_oklch(oklab)), oklab, atol=1e-6)


def test_hue_difference_wraps_around_zero() -> None:
    assert float(hue_difference(350.0, 10.0)) == pytest.approx(-20.0)
    assert float(hue_difference(10.0, 350.0)) == pytest.approx(20.0)
    assert float(hue_difference(0.0, 359.0)) == pytest.approx(1.0)


def test_the_short_form_a_request_accepts_is_parsed_as_css_does() -> None:
    from pipeline.color import parse_hex

    assert parse_hex("#0A0") == (0, 170, 0)
    assert parse_hex("#0a0") == parse_hex("#00AA00")
