"""Architectures that torchvision lacks: CIFAR ResNets, WRN, MobileNet-V1 (CIFAR), FastGRNN."""

from prune_gym.tasks.models.cifar_resnet import CifarResNet, resnet20, resnet32
from prune_gym.tasks.models.mobilenet_v1 import MobileNetV1, mobilenet_v1
from prune_gym.tasks.models.wrn import WideResNet, wrn28x8

__all__ = ["CifarResNet", "MobileNetV1", "WideResNet", "mobilenet_v1", "resnet20", "resnet32", "wrn28x8"]
