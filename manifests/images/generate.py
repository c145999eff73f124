"""Draw the example images of this folder from a fixed seed.

Run ``python manifests/images/generate.py`` to write them again; the output
is the same on every run with the same NumPy and Pillow versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FOLDER = Path(__file__).resolve().parent
WIDTH, HEIGHT = 160, 120


def hills() -> Image.Image:
    """Draw a landscape photo: sky gradient, sun, two hills and a lake."""
    rows = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    sky = (1 - rows) * np.array([90, 150, 230]) + rows * np.array([235, 225, 200])
    image = Image.fromarray(np.broadcast_to(sky, (HEIGHT, WIDTH, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((110, 14, 136, 40), fill=(255, 230, 120))
    draw.polygon([(0, 80), (50, 45), (100, 78), (0, 120)], fill=(60, 120, 60))
    draw.polygon([(40, 90), (110, 50), (160, 85), (160, 120), (40, 120)], fill=(40, 95, 45))
    draw.rectangle((0, 100, 160, 120), fill=(70, 110, 160))
    return image.filter(ImageFilter.GaussianBlur(0.8))


def still_life() -> Image.Image:
    """Draw a still-life photo: a table, a bowl and two fruits, lit from the left."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (200, 190, 170))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 75, 160, 120), fill=(120, 80, 50))
    draw.chord((40, 55, 120, 105), 0, 180, fill=(230, 230, 240))
    draw.ellipse((55, 45, 80, 70), fill=(200, 40, 40))
    draw.ellipse((78, 48, 100, 70), fill=(240, 170, 30))
    light = np.linspace(1.1, 0.8, WIDTH)[None, :, None]
    pixels = np.clip(np.asarray(image, dtype=np.float32) * light, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.6))


def swirls(rng: np.random.Generator) -> Image.Image:
    """Draw a painting of concentric swirls in blue and yellow."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    angle = np.arctan2(y - HEIGHT / 2, x - WIDTH / 2)
    radius = np.hypot(y - HEIGHT / 2, x - WIDTH / 2)
    wave = np.sin(radius / 4.0 + 3 * angle) * 0.5 + 0.5
    noise = rng.normal(0, 0.08, wave.shape)
    mix = np.clip(wave + noise, 0, 1)[..., None]
    pixels = mix * np.array([240, 200, 60]) + (1 - mix) * np.array([30, 50, 140])
    return Image.fromarray(pixels.astype(np.uint8))


def strokes(rng: np.random.Generator) -> Image.Image:
    """Draw a painting of short, thick red, orange and dark brush strokes."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (240, 220, 190))
    draw = ImageDraw.Draw(image)
    palette = [(190, 40, 30), (230, 120, 30), (60, 30, 30), (250, 190, 80)]
    for _ in range(220):
        x, y = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        dx, dy = rng.normal(0, 9, 2)
        color = palette[rng.integers(len(palette))]
        draw.line((x, y, x + dx, y + dy), fill=color, width=int(rng.integers(2, 6)))
    return image.filter(ImageFilter.SMOOTH)


def main() -> None:
    """Write the four example images into this folder."""
    rng = np.random.default_rng(2026)
    hills().save(FOLDER / "hills.jpg", quality=85)
    still_life().save(FOLDER / "still_life.png", optimize=True)
    swirls(rng).save(FOLDER / "swirls.jpg", quality=85)
    strokes(rng).save(FOLDER / "strokes.jpg", quality=85)


if __name__ == "__main__":
    main()
