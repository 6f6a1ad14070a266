"""Draws the bundled demo product shot (consumer/assets/sneaker.png): a red sneaker on a white sweep.

Kept so the asset can be regenerated; it is drawn, not photographed, so it carries no licence.
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

W, H = 320, 224
img = Image.new("RGB", (W, H), (246, 246, 244))
shadow = Image.new("L", (W, H), 0)
ImageDraw.Draw(shadow).ellipse((48, 168, 288, 196), fill=120)
img.paste((200, 200, 198), (0, 0), shadow.filter(ImageFilter.GaussianBlur(8)))
d = ImageDraw.Draw(img)
# upper
d.polygon(
    [(60, 160), (70, 110), (120, 92), (150, 70), (190, 72), (205, 105), (270, 128), (282, 160)],
    fill=(196, 30, 45),
    outline=(120, 16, 28),
)
d.polygon([(150, 70), (190, 72), (200, 100), (160, 100)], fill=(170, 24, 38))
# laces
for i in range(4):
    d.line([(152 + i * 10, 80 + i * 5), (176 + i * 8, 76 + i * 6)], fill=(250, 250, 250), width=3)
# swoosh-like stripe
d.arc((90, 100, 250, 170), start=20, end=160, fill=(250, 250, 250), width=5)
# sole
d.rounded_rectangle((54, 156, 288, 176), radius=8, fill=(252, 252, 252), outline=(190, 190, 190))
d.line([(60, 170), (282, 170)], fill=(215, 215, 215), width=2)
out = Path(__file__).resolve().parent.parent / "consumer" / "assets" / "sneaker.png"
img.save(out, optimize=True)
print(out, out.stat().st_size)
