"""Architectures that torchvision lacks: CIFAR ResNets, WRN, MobileNet-V1 (CIFAR), FastGRNN."""

from prune_gym.tasks.models.cifar_resnet import CifarResNet, resnet20, resnet32

__all__ = ["CifarResNet", "resnet20", "resnet32"]
