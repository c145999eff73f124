"""Decoding every kind of image file users have, and saving results."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from nst_core import ImageError, ImageTooSmallError, decode_image, load_image, save_image
from nst_core.images import resized_shape, tensor_to_image


def _save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


class TestDecodeImage:
    def test_rgb_png_exact(self, tmp_path):
        pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        path = _save(Image.fromarray(pixels), tmp_path / "rgb.png")
        actual = decode_image(path)
        np.testing.assert_array_equal(actual, pixels.astype(np.float32) / 255)

    def test_16_bit_mid_grey_stays_mid_grey(self, tmp_path):
        path = _save(Image.fromarray(np.full((40, 60), 32768, dtype=np.uint16)), tmp_path / "grey16.png")
        assert Image.open(path).mode.startswith("I")
        actual = decode_image(path)
        assert actual.shape == (40, 60, 3)
        np.testing.assert_allclose(actual, 32768 / 65535, atol=1e-6)

    def test_16_bit_bright_values_are_not_clipped_to_white(self, tmp_path):
        ramp = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16)
        path = _save(Image.fromarray(np.tile(ramp, (8, 1))), tmp_path / "ramp16.png")
        actual = decode_image(path)[0, :, 0]
        np.testing.assert_allclose(actual, ramp / 65535, atol=1e-6)
        assert len(np.unique(actual)) == 64

    def test_float_image_is_scaled_by_its_value_range(self, tmp_path):
        values = np.array([[0.0, 250.0, 500.0, 1000.0]], dtype=np.float32).repeat(4, axis=0)
        path = _save(Image.fromarray(values, mode="F"), tmp_path / "float.tiff")
        actual = decode_image(path)[0, :, 0]
        np.testing.assert_allclose(actual, [0.0, 0.25, 0.5, 1.0], atol=1e-6)

    def test_float_image_in_unit_range_is_kept(self, tmp_path):
        values = np.array([[0.0, 0.2, 0.7]], dtype=np.float32).repeat(3, axis=0)
        path = _save(Image.fromarray(values, mode="F"), tmp_path / "unit.tiff")
        np.testing.assert_allclose(decode_image(path)[0, :, 1], [0.0, 0.2, 0.7], atol=1e-6)

    def test_32_bit_integer_image_with_16_bit_values(self, tmp_path):
        values = np.array([[0, 16384, 65535]], dtype=np.int32).repeat(2, axis=0)
        path = _save(Image.fromarray(values, mode="I"), tmp_path / "int32.tiff")
        np.testing.assert_allclose(decode_image(path)[0, :, 2], [0, 16384 / 65535, 1.0], atol=1e-6)

    def test_exif_rotated_photo_comes_out_upright(self, tmp_path):
        stored = np.zeros((40, 60, 3), dtype=np.uint8)
        stored[:, :30] = (255, 0, 0)
        stored[:, 30:] = (0, 0, 255)
        exif = Image.Exif()
        exif[0x0112] = 6  # Stored rotated: display after turning 90 degrees clockwise.
        path = _save(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)
        actual = decode_image(path)
        assert actual.shape == (60, 40, 3)
        top, bottom = actual[5, 20], actual[-5, 20]
        assert top[0] > 0.9
        assert top[2] < 0.1
        assert bottom[2] > 0.9
        assert bottom[0] < 0.1

    def test_transparent_area_comes_out_white(self, tmp_path):
        rgba = np.zeros((10, 20, 4), dtype=np.uint8)
        rgba[:, :10] = (0, 0, 0, 255)
        rgba[:, 10:] = (0, 0, 0, 0)
        path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
        actual = decode_image(path)
        np.testing.assert_allclose(actual[:, :10], 0.0)
        np.testing.assert_allclose(actual[:, 10:], 1.0)

    def test_half_transparent_black_is_mid_grey(self, tmp_path):
        rgba = np.zeros((4, 4, 4), dtype=np.uint8)
        rgba[..., 3] = 128
        path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "half.png")
        np.testing.assert_allclose(decode_image(path), 1 - 128 / 255, atol=1e-6)

    def test_grey_with_alpha(self, tmp_path):
        image = Image.new("LA", (8, 8), (0, 0))
        image.paste((50, 255), (0, 0, 4, 8))
        path = _save(image, tmp_path / "la.png")
        actual = decode_image(path)
        np.testing.assert_allclose(actual[:, :4], 50 / 255, atol=1e-6)
        np.testing.assert_allclose(actual[:, 4:], 1.0)

    def test_palette_with_transparency(self, tmp_path):
        image = Image.new("P", (8, 8), 0)
        image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        image.paste(1, (0, 0, 4, 8))
        image.info["transparency"] = 0
        path = _save(image, tmp_path / "palette.png", transparency=0)
        actual = decode_image(path)
        np.testing.assert_allclose(actual[:, :4], np.broadcast_to([1.0, 0.0, 0.0], (8, 4, 3)), atol=1e-6)
        np.testing.assert_allclose(actual[:, 4:], 1.0)

    def test_grey_image_becomes_three_equal_channels(self, tmp_path):
        path = _save(Image.new("L", (5, 5), 100), tmp_path / "grey.png")
        np.testing.assert_allclose(decode_image(path), 100 / 255, atol=1e-6)

    def test_cmyk_jpeg_becomes_rgb(self, tmp_path):
        path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
        red, green, blue = decode_image(path)[8, 8]
        assert red > 0.9
        assert green < 0.1
        assert blue < 0.1

    def test_animation_uses_first_frame(self, tmp_path):
        frames = [Image.new("RGB", (10, 10), (255, 0, 0)), Image.new("RGB", (10, 10), (0, 0, 255))]
        path = tmp_path / "animated.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
        red, green, blue = decode_image(path)[5, 5]
        assert red > 0.9
        assert blue < 0.1

    def test_large_jpeg_is_decoded_at_reduced_size(self, tmp_path):
        path = _save(Image.new("RGB", (4000, 2400), (10, 200, 30)), tmp_path / "large.jpg")
        reduced = decode_image(path, size=256)
        full = decode_image(path)
        assert full.shape == (2400, 4000, 3)
        assert reduced.shape == (600, 1000, 3)
        assert reduced.shape[1] >= 2 * 256

    def test_pil_image_source(self):
        image = Image.new("RGBA", (6, 4), (255, 0, 0, 0))
        np.testing.assert_allclose(decode_image(image), 1.0)


class TestDecodeErrors:
    def test_missing_path(self, tmp_path):
        path = tmp_path / "nowhere.jpg"
        with pytest.raises(ImageError, match="nowhere.jpg.*file not found"):
            decode_image(path)

    def test_directory(self, tmp_path):
        with pytest.raises(ImageError, match="is a directory"):
            decode_image(tmp_path)

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
        with pytest.raises(ImageError, match="empty.png.*file is empty"):
            decode_image(path)

    def test_non_image_file(self, tmp_path):
        path = tmp_path / "notes.jpg"
        path.write_text("these are not pixels")
        with pytest.raises(ImageError, match="notes.jpg.*not an image file"):
            decode_image(path)

    def test_truncated_jpeg(self, tmp_path):
        buffer = io.BytesIO()
        noise = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, format="JPEG")
        path = tmp_path / "cut.jpg"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        with pytest.raises(ImageError, match="cut.jpg.*truncated or corrupt"):
            decode_image(path)

    def test_truncated_png(self, tmp_path):
        buffer = io.BytesIO()
        noise = np.random.default_rng(2).integers(0, 256, (100, 100, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, format="PNG")
        path = tmp_path / "cut.png"
        path.write_bytes(buffer.getvalue()[:3000])
        with pytest.raises(ImageError, match="cut.png.*truncated or corrupt"):
            decode_image(path)

    def test_pixel_limit(self, tmp_path):
        path = _save(Image.new("RGB", (20, 20)), tmp_path / "bomb.png")
        with pytest.raises(ImageError, match="bomb.png.*max_image_pixels"):
            decode_image(path, max_image_pixels=100)
        assert decode_image(path, max_image_pixels=400).shape == (20, 20, 3)
        assert Image.MAX_IMAGE_PIXELS == 89_478_485

    def test_pixel_limit_can_be_raised_above_pillow_default(self, tmp_path, monkeypatch):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        path = _save(Image.new("RGB", (30, 30)), tmp_path / "big.png")
        assert decode_image(path, max_image_pixels=1000).shape == (30, 30, 3)

    def test_error_pickles_with_its_message(self, tmp_path):
        import pickle

        error = ImageError(tmp_path / "a.jpg", "file is empty")
        copy = pickle.loads(pickle.dumps(error))
        assert str(copy) == str(error)
        assert copy.reason == "file is empty"


class TestLoadImage:
    def test_fit_keeps_aspect_ratio(self, tmp_path):
        path = _save(Image.new("RGB", (640, 427)), tmp_path / "photo.jpg")
        assert tuple(load_image(path, size=256).shape) == (1, 3, 171, 256)

    def test_square_squashes(self, tmp_path):
        path = _save(Image.new("RGB", (640, 427)), tmp_path / "photo.png")
        assert tuple(load_image(path, size=64, resize="square").shape) == (1, 3, 64, 64)

    def test_square_matches_torchvision_resize(self, tmp_path):
        from torchvision import transforms

        pixels = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
        path = _save(Image.fromarray(pixels), tmp_path / "noise.png")
        desired = transforms.Compose([transforms.Resize((48, 48)), transforms.ToTensor()])(Image.open(path))
        actual = load_image(path, size=48, resize="square")[0]
        torch.testing.assert_close(actual, desired, atol=1e-6, rtol=0)

    def test_too_small_names_both_sizes(self, tmp_path):
        path = _save(Image.new("RGB", (1000, 20)), tmp_path / "strip.png")
        with pytest.raises(ImageTooSmallError, match=r"strip.png.*1000x20 to 256x5.*min_side 32"):
            load_image(path, size=256)

    def test_min_side_setting(self, tmp_path):
        path = _save(Image.new("RGB", (1000, 20)), tmp_path / "strip.png")
        assert tuple(load_image(path, size=256, min_side=4).shape) == (1, 3, 5, 256)

    @pytest.mark.parametrize(("width", "height", "size", "expected"), [
        (640, 427, 256, (256, 171)),
        (427, 640, 256, (171, 256)),
        (512, 512, 100, (100, 100)),
        (100, 50, 400, (400, 200)),
    ])
    def test_resized_shape(self, width, height, size, expected):
        assert resized_shape(width, height, size) == expected


class TestSaveImage:
    def test_png_carries_metadata(self, tmp_path):
        image = Image.new("RGB", (8, 6), (1, 2, 3))
        path = save_image(image, tmp_path / "out.png", metadata={"nst:settings_hash": "abc123"})
        with Image.open(path) as saved:
            assert saved.text["nst:settings_hash"] == "abc123"
            assert saved.size == (8, 6)

    def test_jpeg_by_extension(self, tmp_path):
        path = save_image(Image.new("RGB", (8, 8)), tmp_path / "out.JPEG")
        with Image.open(path) as saved:
            assert saved.format == "JPEG"

    def test_unsupported_extension(self, tmp_path):
        with pytest.raises(ValueError, match=r"out.webp.*unsupported extension '.webp'.*\.png"):
            save_image(Image.new("RGB", (8, 8)), tmp_path / "out.webp")

    def test_leaves_no_temporary_file(self, tmp_path):
        save_image(Image.new("RGB", (8, 8)), tmp_path / "sub" / "out.png")
        assert sorted(os.listdir(tmp_path / "sub")) == ["out.png"]

    def test_permissions_follow_umask(self, tmp_path):
        previous = os.umask(0o027)
        try:
            path = save_image(Image.new("RGB", (4, 4)), tmp_path / "out.png")
        finally:
            os.umask(previous)
        assert path.stat().st_mode & 0o777 == 0o640

    def test_replaces_existing_file(self, tmp_path):
        path = tmp_path / "out.png"
        save_image(Image.new("RGB", (8, 8), (255, 0, 0)), path)
        save_image(Image.new("RGB", (4, 4), (0, 255, 0)), path)
        with Image.open(path) as saved:
            assert saved.size == (4, 4)

    def test_failed_write_keeps_old_file(self, tmp_path):
        path = tmp_path / "out.jpg"
        save_image(Image.new("RGB", (8, 8)), path)
        before = path.read_bytes()
        with pytest.raises(OSError, match="RGBA"):
            save_image(Image.new("RGBA", (8, 8)), path)
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["out.jpg"]

    def test_tensor_round_trip(self):
        tensor = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2]).view(1, 1, 5).expand(3, 1, 5)
        image = tensor_to_image(tensor)
        assert list(np.asarray(image)[0, :, 0]) == [0, 128, 255, 255, 0]

    def test_png_metadata_is_utf8(self, tmp_path):
        path = save_image(Image.new("RGB", (2, 2)), tmp_path / "out.png", metadata={"nst:content": "café.jpg"})
        with Image.open(path) as saved:
            assert isinstance(saved, PngImagePlugin.PngImageFile)
            assert saved.text["nst:content"] == "café.jpg"
