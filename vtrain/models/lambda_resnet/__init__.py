"""LambdaNetworks: Modeling Long-Range Interactions Without Attention (Bello 2021): the lambda layer and
LambdaResNets."""

from vtrain.models.lambda_resnet.checkpoint import load_lambda_checkpoint
from vtrain.models.lambda_resnet.layer import LambdaLayer, relative_position_index
from vtrain.models.lambda_resnet.presets import (
    PRESETS,
    lambda_resnet26,
    lambda_resnet50,
    lambda_resnet50_hybrid,
    lambda_resnet50_u4,
    lambda_resnet101_hybrid,
    lambda_resnet152_hybrid,
    lambda_resnet200_hybrid,
    lambda_resnet270_hybrid,
    lambda_resnet350_hybrid,
    lambda_resnet420_hybrid,
    lambda_tiny,
)
from vtrain.models.lambda_resnet.resnet import LambdaResNet

load_pretrained = load_lambda_checkpoint

__all__ = [
    "PRESETS",
    "LambdaLayer",
    "LambdaResNet",
    "lambda_resnet26",
    "lambda_resnet50",
    "lambda_resnet50_hybrid",
    "lambda_resnet50_u4",
    "lambda_resnet101_hybrid",
    "lambda_resnet152_hybrid",
    "lambda_resnet200_hybrid",
    "lambda_resnet270_hybrid",
    "lambda_resnet350_hybrid",
    "lambda_resnet420_hybrid",
    "lambda_tiny",
    "load_lambda_checkpoint",
    "load_pretrained",
    "relative_position_index",
]
