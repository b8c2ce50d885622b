"""One rank of a 2-rank gloo MoCo-v2 run of the toy modality (launched by torchrun from test_toy_modality.py).

Each rank records, per step, the descriptor and the queue row it wrote, then saves its queues, pointers and weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]

from toy import ToyVectors, toy_config, toy_parts, toy_trainer  # noqa: E402

from aiaudio.engine.pretraining import run_pretraining  # noqa: E402


def main(out: Path, heads: bool) -> None:
    trainer = toy_trainer(steps=10, ckpt_every=10, batch_size=8)
    seen: list[tuple[list[float], int]] = []
    holder = {}

    def build(info):
        parts = toy_parts("mocov2", trainer, ToyVectors(), queue_size=128, heads_per_descriptor=heads)
        method = parts.model.method
        original = method.enqueue

        def recording_enqueue(index, keys):
            seen.append((method.descriptors[int(index)].tolist(), len(keys)))
            original(index, keys)

        method.enqueue = recording_enqueue
        holder["info"], holder["method"] = info, method
        return parts

    run_pretraining(out / "run", toy_config("mocov2", trainer), trainer, build)
    method, rank = holder["method"], holder["info"].rank
    torch.save({
        "seen": seen, "queue": method.queue.clone(), "queue_ptr": method.queue_ptr.clone(),
        "descriptors": method.descriptors.clone(),
        "weights": {k: v.clone() for k, v in method.state_dict().items() if not k.startswith(("queue", "momentum"))},
    }, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "heads")
