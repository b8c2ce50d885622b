"""Neural network building blocks: hypernetwork ResNets conditioned on invariance descriptors, baselines, heads.

Importing this package registers ``hyper_resnet18``, ``hyper_resnet50``, ``plain_resnet18`` and ``plain_resnet50`` with
``timm.create_model``; :func:`create_encoder` builds any registered invariance encoder by name.
"""

from aiaudio.nn.heads import PredictionHead, ProjectionHead, mlp_layers
from aiaudio.nn.hyper import HyperConv2d, InvarianceEmbedding, StackedBatchNorm2d, check_descriptor, grouped_conv2d
from aiaudio.nn.resnet import (
    ARCHITECTURES,
    BasicBlock,
    Bottleneck,
    Downsample,
    HyperResNet,
    PlainEncoder,
    StaticResNet,
    hyper_resnet,
    hyper_resnet18,
    hyper_resnet50,
    plain_resnet,
    plain_resnet18,
    plain_resnet50,
)
from aiaudio.nn.registry import ENCODER_ALIASES, canonical_encoder_name, create_encoder, encoder_kwargs

__all__ = [
    "ARCHITECTURES",
    "BasicBlock",
    "Bottleneck",
    "Downsample",
    "HyperConv2d",
    "HyperResNet",
    "InvarianceEmbedding",
    "PlainEncoder",
    "PredictionHead",
    "ProjectionHead",
    "StackedBatchNorm2d",
    "StaticResNet",
    "create_encoder",
    "encoder_kwargs",
    "canonical_encoder_name",
    "ENCODER_ALIASES",
    "check_descriptor",
    "grouped_conv2d",
    "hyper_resnet",
    "hyper_resnet18",
    "hyper_resnet50",
    "mlp_layers",
    "plain_resnet",
    "plain_resnet18",
    "plain_resnet50",
]
