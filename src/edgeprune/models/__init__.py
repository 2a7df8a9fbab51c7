"""Model zoo: CIFAR-sized CNNs of the paper, plus ResNet-56 and a tiny CNN for tests.

A zoo model's file is imported (and registers it) when the model is first built, so listing the zoo
imports no torch.
"""

from edgeprune.models.registry import ZOO, create, describe, list_models, register

__all__ = ["ZOO", "create", "describe", "list_models", "register"]
