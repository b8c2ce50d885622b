"""How much of an amortised image encoder's deficit comes from eval-mode BatchNorm statistics mixed over descriptors?

A Hyper-ResNet's BatchNorm layers keep one set of running statistics, updated at every pretraining step whatever
descriptor that step drew, while each descriptor generates different kernels and so different activation
statistics. In eval mode every descriptor is normalised with that mixture. This probe reads out frozen features of
Fashion-MNIST (the vision mini benchmark's ``fashion_cifar``, a seeded 1,500-image train / 2,000-image test subset)
with a logistic regression (scikit-learn, L2-normalised features), at each binary descriptor of each run and at
i = 0.5: with the checkpoint's running statistics; with statistics recalibrated at that descriptor (cumulative
averages of train-mode passes over 1,024 pool images; no weight changes); and with per-descriptor statistics
(``descriptor_statistics``, calibrated on the same images at the binary descriptors, mixed multilinearly between
them at i = 0.5). A plain run is probed the same way as a control.

    python benchmarks/batchnorm_probe.py runs/vision_minibench/cpu/{ai_simclr,simclr,ai_mocov2,mocov2} \\
        --data data/vision_minibench --out benchmarks/results/batchnorm_probe_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aiaudio.engine.pretrained import PretrainedEncoder, load_encoder  # noqa: E402
from aiaudio.eval.fewshot import descriptor_label  # noqa: E402
from aiaudio.nn.hyper import calibrate_descriptor_statistics  # noqa: E402
from aivision.data import ImageSet, image_folder_entries  # noqa: E402
from aivision.datasets import read_official  # noqa: E402
from benchmarks.machine import commit, machine_info  # noqa: E402

CALIBRATION_IMAGES = 1024
TRAIN, TEST = 1500, 2000


def features(encoder: PretrainedEncoder, images: torch.Tensor, descriptor: torch.Tensor | None) -> np.ndarray:
    with torch.no_grad():
        rows = [encoder(encoder.inputs(images[s : s + 256]), descriptor) for s in range(0, len(images), 256)]
    return torch.nn.functional.normalize(torch.cat(rows), dim=1).numpy()


def recalibrated(encoder: PretrainedEncoder, images: torch.Tensor, descriptor: torch.Tensor | None) -> PretrainedEncoder:
    """A copy whose BatchNorm running statistics are the cumulative averages of train-mode passes at ``descriptor``."""
    copied = copy.deepcopy(encoder)
    for module in copied.encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    copied.encoder.train()
    with torch.no_grad():
        for start in range(0, len(images), 128):
            copied.encoder(copied.inputs(images[start : start + 128]), descriptor)
    copied.encoder.eval()
    return copied


def with_descriptor_statistics(encoder: PretrainedEncoder, images: torch.Tensor) -> PretrainedEncoder:
    """A copy built with per-descriptor BatchNorm statistics (``descriptor_statistics``), the checkpoint's weights,
    and the statistics calibrated at every descriptor of the space on ``images``."""
    copied = copy.deepcopy(encoder)
    model = copied.encoder
    rebuilt = type(model)(model.layer1[0].__class__, [len(stage) for stage in (model.layer1, model.layer2, model.layer3,
                                                                                model.layer4)],
                          inv_dim=model.inv_dim, in_chans=model.conv1.in_channels, width=model.width,
                          hyper_hidden=model.hyper_hidden, embed_dim=model.embed_dim, dependence=model.dependence,
                          descriptor_statistics=True)
    rebuilt.load_state_dict(model.state_dict())
    copied.encoder = rebuilt.eval()
    calibrate_descriptor_statistics(rebuilt, [copied.inputs(images[s : s + 128]) for s in range(0, len(images), 128)],
                                    encoder.space.table)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretraining run directories")
    parser.add_argument("--data", type=Path, default=Path("data/vision_minibench"))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pool = image_folder_entries(args.data / "pool" / "train")
    calibration = ImageSet([pool[i] for i in rng.choice(len(pool), CALIBRATION_IMAGES, replace=False)], 64, 73)
    calibration_images = calibration.load_all()
    train = read_official("cifar10", args.data / "fashion_cifar", "train")
    test = read_official("cifar10", args.data / "fashion_cifar", "test")
    train_rows, test_rows = rng.choice(len(train), TRAIN, replace=False), rng.choice(len(test), TEST, replace=False)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for run in args.runs:
        encoder = load_encoder(run, torch.device("cpu"))
        tables = None
        descriptors: list[torch.Tensor | None] = [None]
        if encoder.amortised:
            descriptors = [*encoder.space.table, torch.full((encoder.space.dim,), 0.5)]
            tables = with_descriptor_statistics(encoder, calibration_images)
        for descriptor in descriptors:
            name = "plain" if descriptor is None else descriptor_label(encoder.space, descriptor)
            scores = {}
            models = [("checkpoint statistics", encoder),
                      ("recalibrated", recalibrated(encoder, calibration_images, descriptor))]
            if tables is not None:
                models.append(("per-descriptor statistics", tables))
            for label, model in models:
                fitted = LogisticRegression(max_iter=2000, C=10.0).fit(
                    features(model, train.images[train_rows], descriptor), train.targets[train_rows])
                scores[label] = float(fitted.score(features(model, test.images[test_rows], descriptor),
                                                   test.targets[test_rows]))
            results.setdefault(run.name, {})[name] = scores
            print(run.name, name, scores, flush=True)
    record = {"benchmark": "batchnorm_probe", "command": "python benchmarks/batchnorm_probe.py " +
              " ".join(str(r) for r in args.runs), "commit": commit(), "machine": machine_info(torch.device("cpu")),
              "seeds": {"subsets": 0}, "config": {"train": TRAIN, "test": TEST, "calibration_images": CALIBRATION_IMAGES,
                                                  "readout": "LogisticRegression(C=10) on L2-normalised features"},
              "accuracy": results}
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
