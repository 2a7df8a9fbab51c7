"""Model zoo: CIFAR-sized CNNs of the paper, plus ResNet-56 and a tiny CNN for tests."""

# Importing the model files registers them.
from edgeprune.models import alexnet, mobilenetv2, resnet, tiny, vgg  # noqa: F401, E402
from edgeprune.models.registry import create, describe, list_models, register

__all__ = ["create", "describe", "list_models", "register"]
