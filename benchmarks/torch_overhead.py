"""tle's epoch time ÷ a hand-written PyTorch loop on the same model, data and batch size (target ≤ 1.02)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import build, overhead_report, overhead_spec, timed  # noqa: E402

EPOCHS = 6
ROUNDS = 6


def hand_written_epochs(spec, data) -> list[float]:
    """The loop a PyTorch user would write, reporting what tle reports (train and val loss/accuracy):
    shuffle, forward, cross-entropy, backward, Adam step; then a validation pass."""
    _, _, net = build(spec, data)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xv, yv = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=spec.train.lr, eps=1e-7)
    bs = spec.train.batch_size
    generator = torch.Generator().manual_seed(0)

    def epoch():
        net.train()
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        for idx in torch.randperm(len(y), generator=generator).split(bs):
            opt.zero_grad(set_to_none=True)
            logits = net(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y[idx]).sum()
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(xv[i:i + bs]) for i in range(0, len(xv), bs)])
            metrics = (float(loss_sum) / len(y), float(correct) / len(y), float(F.cross_entropy(logits, yv)),
                       float((logits.argmax(1) == yv).float().mean()))
        return metrics

    return timed(epoch, EPOCHS)


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    overhead_report("PyTorch loop", overhead_spec("torch", EPOCHS), hand_written_epochs, ROUNDS)


if __name__ == "__main__":
    main()
