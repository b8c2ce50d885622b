"""Parameter counts of the hypernetwork ResNets and their plain baselines (built on the meta device: no memory).

Prints JSON: for each model the total, hypernetwork (hypernetworks + block embeddings) and static parameter counts,
and for each hyper model the ratio of its total to the plain model's.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from aiaudio.nn import HyperResNet, create_encoder, encoder_kwargs

HYPER_HIDDEN = 32
EMBED_DIM = 16

# name -> (registered encoder, in_chans, inv_dim); the plain baseline of "hyper_<arch>" is "plain_<arch>".
MODELS: dict[str, tuple[str, int, int | None]] = {
    "hyper_resnet18_in1_K7": ("hyper_resnet18", 1, 7),
    "resnet18_in1": ("plain_resnet18", 1, None),
    "hyper_resnet50_in3_K5": ("hyper_resnet50", 3, 5),
    "hyper_resnet50_in3_K2": ("hyper_resnet50", 3, 2),
    "resnet50_in3": ("plain_resnet50", 3, None),
}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total, hypernetwork and static parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    hyper = sum(p.numel() for p in model.hypernetwork_parameters()) if isinstance(model, HyperResNet) else 0
    return {"total": total, "hypernetwork": hyper, "static": total - hyper}


def main() -> None:
    report: dict[str, dict[str, float | int | str]] = {}
    for name, (kind, in_chans, inv_dim) in MODELS.items():
        with torch.device("meta"):
            options = {"hyper_hidden": HYPER_HIDDEN, "embed_dim": EMBED_DIM}
            model = create_encoder(kind, encoder_kwargs(kind, inv_dim, in_chans, options))
        report[name] = {"kind": kind, "in_chans": in_chans, **parameter_counts(model)}
        if inv_dim is not None:
            report[name]["inv_dim"] = inv_dim
    for name, entry in report.items():
        if str(entry["kind"]).startswith("hyper_"):
            plain_kind = "plain_" + str(entry["kind"]).removeprefix("hyper_")
            plain = next(v for v in report.values() if v["kind"] == plain_kind)
            entry["ratio_to_plain"] = round(int(entry["total"]) / int(plain["total"]), 3)
    print(json.dumps({"hyper_hidden": HYPER_HIDDEN, "embed_dim": EMBED_DIM, "models": report}, indent=2))


if __name__ == "__main__":
    main()
