"""fastssl: fast self-supervised representation learning on CIFAR.

``import fastssl`` stays light: submodules load when first used."""


def load_encoder(path, device="cpu"):
    """The backbone of a fastssl checkpoint or run folder, in eval mode, and its feature dimension
    (see ``fastssl.encoder.load_encoder``)."""
    from .encoder import load_encoder as _load
    return _load(path, device)


__all__ = ["load_encoder"]
