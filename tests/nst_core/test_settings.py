"""Validation, conversion and hashing of transfer settings."""

from __future__ import annotations

import pickle

import pytest

from nst_core import MAX_SIZE, MAX_STEPS, SettingsError, TransferSettings


class TestTransferSettings:
    def test_defaults_follow_the_original_script(self):
        settings = TransferSettings()
        assert settings.content_layers == (7,)
        assert settings.style_layers == (4, 7)
        assert settings.style_layer_weights == (1.0, 1.0)
        assert (settings.content_weight, settings.style_weight, settings.tv_weight) == (1.0, 1e5, 0.0)
        assert (settings.steps, settings.learning_rate, settings.optimizer) == (200, 0.01, "adam")
        assert settings.effective_style_size == settings.size == 512

    @pytest.mark.parametrize(("values", "message"), [
        ({"steps": 0}, "steps must be between 1 and 100000. Got 0"),
        ({"steps": MAX_STEPS + 1}, "steps must be between 1"),
        ({"size": MAX_SIZE + 1}, f"size must be between 1 and {MAX_SIZE}"),
        ({"style_weight": -1.0}, "style_weight must be a finite number of at least 0. Got -1.0"),
        ({"content_weight": float("nan")}, "content_weight must be a finite number"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number above 0"),
        ({"optimizer": "sgd"}, "optimizer must be one of adam, lbfgs. Got 'sgd'"),
        ({"resize": "crop"}, "resize must be one of fit, square"),
        ({"style_layers": (4, 19)}, "style_layers must hold block indices from 0 to 18. Got 19"),
        ({"content_layers": ()}, "content_layers must be a non-empty list"),
        ({"style_layers": (4, 4)}, "style_layers must not repeat a block"),
        ({"style_layer_weights": (1.0,)}, "one weight per style layer"),
        ({"size": 2.5}, "size must be a whole number. Got 2.5"),
    ])
    def test_invalid_value_names_setting_and_value(self, values, message):
        with pytest.raises(SettingsError) as caught:
            TransferSettings(**values)
        assert any(message in problem for problem in caught.value.problems), caught.value.problems

    def test_all_problems_reported_at_once(self):
        with pytest.raises(SettingsError) as caught:
            TransferSettings(steps=0, size=0, style_weight=-1)
        assert len(caught.value.problems) == 3

    def test_settings_are_frozen_and_hashable(self):
        settings = TransferSettings()
        with pytest.raises(AttributeError):
            settings.steps = 5
        assert hash(settings) == hash(TransferSettings())

    def test_error_pickles(self):
        error = SettingsError(["a", "b"])
        assert pickle.loads(pickle.dumps(error)).problems == ["a", "b"]


class TestFromMapping:
    def test_converts_csv_strings(self):
        settings = TransferSettings.from_mapping({
            "steps": "50", "style_weight": "1e4", "style_layers": "4, 7, 9", "normalize": "no",
            "size": "256.0", "optimizer": " LBFGS ",
        })
        assert settings.steps == 50
        assert settings.style_weight == 1e4
        assert settings.style_layers == (4, 7, 9)
        assert settings.style_layer_weights == (1.0, 1.0, 1.0)
        assert settings.normalize is False
        assert settings.size == 256
        assert settings.optimizer == "lbfgs"

    def test_empty_cells_keep_base(self):
        base = TransferSettings(steps=20)
        assert TransferSettings.from_mapping({"steps": "", "size": None}, base=base) == base

    def test_unknown_and_invalid_reported_together(self):
        with pytest.raises(SettingsError) as caught:
            TransferSettings.from_mapping({"stpes": 10, "size": "big", "steps": 0})
        problems = caught.value.problems
        assert any("unknown setting 'stpes'" in problem for problem in problems)
        assert any("size must be a whole number. Got 'big'" in problem for problem in problems)
        assert any("steps must be between 1" in problem for problem in problems)

    def test_boolean_is_not_a_number(self):
        with pytest.raises(SettingsError, match="steps must be a whole number. Got True"):
            TransferSettings.from_mapping({"steps": True})


class TestSettingsHash:
    def test_stable_and_sensitive(self):
        assert TransferSettings().settings_hash() == TransferSettings().settings_hash()
        assert TransferSettings().settings_hash() != TransferSettings(steps=201).settings_hash()
        assert TransferSettings().settings_hash("a") != TransferSettings().settings_hash("b")
        assert len(TransferSettings().settings_hash()) == 12

    def test_decode_limit_does_not_change_hash(self):
        assert TransferSettings(max_image_pixels=None).settings_hash() == TransferSettings().settings_hash()


def test_size_below_min_side_is_rejected():
    with pytest.raises(SettingsError, match=r"size must be at least min_side \(32 px\).*Got 16"):
        TransferSettings(size=16)
    assert TransferSettings(size=16, min_side=8).size == 16
