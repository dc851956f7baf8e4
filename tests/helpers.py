"""Helpers shared by tests."""

import torch
import torch.nn as nn


def calibrate(model: torch.nn.Module, example: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm real statistics and non-trivial gamma/beta.

    Random-init torchvision models often have activations that vanish before
    the classifier (GoogLeNet's output is its bias), which would make
    "compact == masked" an empty check. Batch statistics from one random batch
    keep activations at unit scale, so the comparison means something.
    """
    g = torch.Generator().manual_seed(seed)
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
            if m.affine:
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.uniform_(-0.2, 0.2, generator=g)
            m.train()
    with torch.no_grad():
        model(torch.randn(example.shape, generator=g))
    return model.eval()


class HandWrittenAttention(nn.Module):
    """Self-attention as people write it: its head dim and scale computed from
    the input's width (which pruning the model dim changes), or held as
    attributes; SDPA's default scale from q's width."""

    def __init__(self, dim: int, heads: int, sdpa: bool, from_shape: bool = True):
        super().__init__()
        self.heads, self.sdpa, self.from_shape, self.head_dim = heads, sdpa, from_shape, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        d = c // self.heads if self.from_shape else self.head_dim
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            y = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            y = (q @ k.transpose(-2, -1) * d ** -0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, self.heads * d))


class AttentionNet(nn.Module):
    def __init__(self, sdpa: bool, from_shape: bool = True, heads: int = 2):
        super().__init__()
        self.embed, self.norm = nn.Linear(6, 16), nn.LayerNorm(16)
        self.attn, self.head = HandWrittenAttention(16, heads, sdpa, from_shape), nn.Linear(16, 3)

    def sharpened(self) -> "AttentionNet":
        """Non-trivial norm parameters and peaked attention, so a wrong scale or a wrong head shows."""
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)
            self.attn.qkv.weight.mul_(4)
        return self

    def forward(self, x):
        h = self.embed(x)
        return self.head(h + self.attn(self.norm(h)))
