"""Neural network building blocks: hypernetwork ResNets conditioned on invariance descriptors, baselines, heads.

Importing this package registers ``hyper_resnet18`` and ``hyper_resnet50`` with ``timm.create_model``.
"""

from aiaudio.nn.heads import PredictionHead, ProjectionHead, mlp_layers
from aiaudio.nn.hyper import HyperConv2d, InvarianceEmbedding, StackedBatchNorm2d, check_descriptor, grouped_conv2d
from aiaudio.nn.resnet import (
    ARCHITECTURES,
    ENCODER_KINDS,
    BasicBlock,
    Bottleneck,
    Downsample,
    HyperResNet,
    PlainEncoder,
    StaticResNet,
    build_encoder,
    hyper_resnet,
    hyper_resnet18,
    hyper_resnet50,
    plain_resnet,
)

__all__ = [
    "ARCHITECTURES",
    "ENCODER_KINDS",
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
    "build_encoder",
    "check_descriptor",
    "grouped_conv2d",
    "hyper_resnet",
    "hyper_resnet18",
    "hyper_resnet50",
    "mlp_layers",
    "plain_resnet",
]
