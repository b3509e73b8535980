"""Encoders and heads: shapes, the CIFAR stem, channels-last, the Gaussian head's bounds."""
import pytest
import torch

from fastssl.models import GaussianHead, build_encoder, mlp


@pytest.mark.parametrize("name,width,dim", [("resnet18", 64, 512), ("resnet50", 64, 2048), ("resnet18", 16, 128),
                                            ("resnet50", 8, 256)])
def test_encoder_output_shape(name, width, dim):
    enc = build_encoder(name, width).eval()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        h = enc.to(memory_format=torch.channels_last)(x)
    assert enc.dim == dim and h.shape == (2, dim) and torch.isfinite(h).all()


def test_resnet18_parameter_count_matches_the_standard_cifar_network():
    # ResNet-18 with the CIFAR stem (no fc): 11.17M parameters.
    n = sum(p.numel() for p in build_encoder("resnet18").parameters())
    assert 11.1e6 < n < 11.2e6


def test_cifar_stem_keeps_resolution():
    enc = build_encoder("resnet18", 8)
    assert enc.stem(torch.randn(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_channels_last_matches_contiguous():
    enc = build_encoder("resnet18", 8).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a = enc(x)
        b = enc.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_unknown_encoder():
    with pytest.raises(ValueError, match="resnet18"):
        build_encoder("vgg")


def test_heads():
    assert mlp(16, 32, 8)(torch.randn(4, 16)).shape == (4, 8)
    head = GaussianHead(16, 32, 8, logvar_bound=3.0)
    head.logvar.bias.data.fill_(100.0)
    mu, logvar = head(torch.randn(4, 16))
    assert mu.shape == logvar.shape == (4, 8)
    assert logvar.abs().max() <= 3.0
