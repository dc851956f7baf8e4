"""One rank of the DDP fine-tuning test (launched by torchrun from test_training.py).

Every rank compiles the same model (same seed), wraps the masked model in
DistributedDataParallel (gloo, CPU), trains on its own data, reconstructs, and
saves what the test compares.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from helpers import calibrate  # noqa: E402
from test_training import SmallResNet, dropped_values  # noqa: E402

import graphprune  # noqa: E402


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    result = graphprune.prune(calibrate(SmallResNet(), x), x, ratio=0.5)
    masked = result.masked.train()
    initial = {k: v.clone() for k, v in graphprune.reconstruct(masked).compact.state_dict().items()}
    model = torch.nn.parallel.DistributedDataParallel(masked)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    steps = 4
    for _ in range(steps):
        images, labels = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # BatchNorm statistics are each rank's own (DDP averages gradients, not
    # buffers, unless SyncBatchNorm is used): take rank 0's, as before saving.
    for buffer in masked.buffers():
        dist.broadcast(buffer, 0)
    rec = graphprune.reconstruct(model, verify="report")  # takes the DDP wrapper as it is
    torch.save({
        "compact": rec.compact.state_dict(),
        "initial": initial,
        "dropped_nonzero": int(dropped_values(result, masked).ne(0).sum()),
        "exact": bool(rec.report.exact),
        "max_rel_error": float(rec.report.max_rel_error),
        "steps": steps,
    }, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
