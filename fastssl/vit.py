"""Vision Transformers for 32-px images (``--encoder vit_tiny|vit_small``).

Patches of 4 x 4 pixels: a 32-px image is an 8 x 8 grid of 64 tokens, plus a class token. Pre-norm
blocks, x <- x + Attn(LN(x)); x <- x + MLP(LN(x)), MLP ratio 4 with GELU; learned position embeddings;
the feature h is the class token after the final LayerNorm (``dim`` = the width). Standard sizes:
Tiny depth 12, width 192, 3 heads; Small depth 12, width 384, 6 heads. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (a fused flash / memory-efficient kernel on GPUs).

Other image sizes (multi-crop local views, progressive resolution) get the position embeddings of
their grid by bicubic interpolation of the 8 x 8 table. ``--width`` does not apply to a ViT, and the
channels-last options have no effect beyond the patch convolution: the tokens are (B, T, D) tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the width {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)                 # (b, heads, t, d / heads)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT backbone; ``forward`` returns the class token's features h of size ``dim``."""

    def __init__(self, depth: int = 12, dim: int = 192, heads: int = 3, patch: int = 4, image: int = 32,
                 mlp_ratio: int = 4):
        super().__init__()
        if image % patch:
            raise ValueError(f"the image size {image} must be a multiple of the patch size {patch}")
        self.patch = patch
        self.grid = image // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dim = dim
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def position_embeddings(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h w, dim): the class token's entry and the patch table resized to an h x w grid."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        table = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], table.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)                                   # (b, dim, h, w)
        h, w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.blocks(tokens + self.position_embeddings(h, w))
        return self.norm(tokens[:, 0])


VIT_SIZES = {
    "vit_tiny": dict(depth=12, dim=192, heads=3),
    "vit_small": dict(depth=12, dim=384, heads=6),
}
