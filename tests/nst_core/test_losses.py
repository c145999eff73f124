"""Gram matrix, content, style and total-variation losses."""

from __future__ import annotations

import pytest
import torch

from nst_core import content_loss, gram_matrix, style_loss, total_variation


class TestGramMatrix:
    def test_matches_definition(self):
        features = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(0))
        flat = features.view(4, 15)
        desired = flat @ flat.t() / (4 * 3 * 5)
        torch.testing.assert_close(gram_matrix(features)[0], desired)

    def test_batch_equals_items(self):
        features = torch.randn(3, 8, 6, 6, generator=torch.Generator().manual_seed(1))
        batched = gram_matrix(features)
        for index in range(3):
            torch.testing.assert_close(batched[index], gram_matrix(features[index : index + 1])[0])

    def test_channels_last_input(self):
        features = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(
            gram_matrix(features.contiguous(memory_format=torch.channels_last)), gram_matrix(features)
        )

    def test_exception(self):
        with pytest.raises(ValueError, match=r"\(B, C, H, W\). Got \(4, 5\)"):
            gram_matrix(torch.zeros(4, 5))


class TestLosses:
    def test_content_loss_is_mse_per_item(self):
        a = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
        b = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
        losses = content_loss(a, b)
        assert losses.shape == (2,)
        for index in range(2):
            torch.testing.assert_close(losses[index], torch.nn.functional.mse_loss(a[index], b[index]))

    def test_style_loss_broadcasts_one_style(self):
        grams = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(5))
        target = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(6))
        losses = style_loss(grams, target)
        torch.testing.assert_close(losses[2], torch.nn.functional.mse_loss(grams[2], target[0]))

    def test_total_variation(self):
        assert total_variation(torch.ones(2, 3, 5, 5)).tolist() == [0.0, 0.0]
        stripes = torch.zeros(1, 1, 2, 4)
        stripes[..., 1::2] = 1.0
        torch.testing.assert_close(total_variation(stripes), torch.tensor([1.0]))

    def test_batch_gradients_are_independent(self):
        images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(7), requires_grad=True)
        total_variation(images).sum().backward()
        solo = images[1:].detach().clone().requires_grad_(True)
        total_variation(solo).sum().backward()
        torch.testing.assert_close(images.grad[1:], solo.grad)
