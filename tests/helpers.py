"""Helpers shared by tests."""

import torch


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
