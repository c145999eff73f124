"""Weights loading and the truncated, folded MobileNetV2 extractor."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torchvision.models import mobilenet_v2

from nst_core import FeatureExtractor, WeightsError, load_feature_extractor, load_features_state_dict, weights_id


@pytest.fixture(scope="module")
def standin_state(standin_weights):
    return load_features_state_dict(standin_weights)


class TestWeights:
    def test_features_only_file(self, standin_state):
        assert set(standin_state) == set(mobilenet_v2().features.state_dict())

    def test_full_checkpoint_and_prefix_free_file_load_the_same(self, standin_state, tmp_path):
        model = mobilenet_v2()
        model.features.load_state_dict(standin_state)
        full = tmp_path / "full.pth"
        torch.save(model.state_dict(), full)
        bare = tmp_path / "bare.pth"
        torch.save(model.features.state_dict(), bare)
        for path in (full, bare):
            loaded = load_features_state_dict(path)
            assert set(loaded) == set(standin_state)
            torch.testing.assert_close(loaded["0.0.weight"], standin_state["0.0.weight"])

    def test_random_weights_are_seeded(self):
        first = load_features_state_dict("random:5")["0.0.weight"]
        torch.testing.assert_close(first, load_features_state_dict("random:5")["0.0.weight"])
        assert not torch.equal(first, load_features_state_dict("random:6")["0.0.weight"])

    def test_weights_id(self, standin_weights):
        assert weights_id("IMAGENET1K_V1") == "IMAGENET1K_V1"
        assert weights_id("MobileNet_V2_Weights.IMAGENET1K_V1") == "IMAGENET1K_V1"
        assert weights_id("random") == "random:0"
        with pytest.raises(ValueError, match="DEFAULT moves with torchvision releases"):
            weights_id("DEFAULT")
        assert weights_id(standin_weights) == "sha256:2ddfe1dca4c7ad08"

    def test_default_alias_is_rejected(self):
        with pytest.raises(ValueError, match="DEFAULT moves with torchvision releases.*IMAGENET1K_V1"):
            load_features_state_dict("DEFAULT")

    def test_missing_file(self, tmp_path):
        with pytest.raises(WeightsError, match=r"nothing.pth' not found.*IMAGENET1K_V1.*'random'"):
            load_features_state_dict(tmp_path / "nothing.pth")

    def test_wrong_network(self, tmp_path):
        path = tmp_path / "resnet_like.pth"
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
        with pytest.raises(WeightsError, match="does not match torchvision's MobileNetV2.*missing keys"):
            load_features_state_dict(path)

    def test_not_a_checkpoint(self, tmp_path):
        path = tmp_path / "notes.pth"
        path.write_text("not a checkpoint")
        with pytest.raises(WeightsError, match="Cannot read weights file.*notes.pth"):
            load_features_state_dict(path)

    def test_offline_download_error_names_url_cache_and_option(self, tmp_path):
        # A proxy on a closed loopback port makes the download fail at once,
        # as it does on a machine without internet access.
        environment = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), https_proxy="http://127.0.0.1:9",
                           HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
        code = (
            "from nst_core import load_features_state_dict, WeightsError\n"
            "try:\n    load_features_state_dict('IMAGENET1K_V1')\n"
            "except WeightsError as error:\n    print(error)\n"
        )
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                                   timeout=120)
        message = completed.stdout
        assert "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in message
        assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
        assert "--weights PATH" in message


class TestFeatureExtractor:
    def test_matches_torchvision_features(self, standin_state):
        reference = mobilenet_v2().features.eval()
        reference.load_state_dict(standin_state)
        extractor = FeatureExtractor(standin_state, 7)
        image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            actual = extractor(image, [4, 7], normalize=False)
            x = image
            desired = {}
            for index in range(8):
                x = reference[index](x)
                desired[index] = x
        for layer in (4, 7):
            torch.testing.assert_close(actual[layer], desired[layer], rtol=1e-4, atol=1e-4)

    def test_exact_extractor_equals_torchvision_bit_for_bit(self, standin_state):
        reference = mobilenet_v2().features.eval()
        reference.load_state_dict(standin_state)
        extractor = FeatureExtractor(standin_state, 4, exact=True)
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert torch.equal(extractor(image, [4], normalize=False)[4], reference[:5](image))

    def test_normalizes_its_input(self, standin_state):
        extractor = FeatureExtractor(standin_state, 4)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(
                extractor(image, [4])[4], extractor((image - mean) / std, [4], normalize=False)[4]
            )

    def test_truncated_without_parameter_gradients(self, standin_state):
        extractor = FeatureExtractor(standin_state, 7)
        assert len(extractor.blocks) == 8
        assert not any(parameter.requires_grad for parameter in extractor.parameters())
        assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in extractor.modules())
        assert not extractor.training

    def test_gradient_reaches_the_image(self, standin_state):
        extractor = FeatureExtractor(standin_state, 4)
        image = torch.rand(1, 3, 32, 32, requires_grad=True)
        extractor(image, [4])[4].sum().backward()
        assert image.grad is not None and image.grad.abs().sum() > 0

    def test_deeper_layer_than_depth_is_rejected(self, standin_state):
        with pytest.raises(ValueError, match="Block 9 requested, but this extractor stops at block 7"):
            FeatureExtractor(standin_state, 7)(torch.rand(1, 3, 32, 32), [9])

    def test_loaded_once_per_process(self, standin_weights):
        first = load_feature_extractor(standin_weights, "cpu", 7)
        assert load_feature_extractor(str(standin_weights), torch.device("cpu"), 7) is first
        assert load_feature_extractor(standin_weights, "cpu", 4) is not first
