"""Backbones: a small ResNet for small images, or any torchvision classifier.

Every network exposes ``features(x)`` (the penultimate representation that
the linear probe reads) and ``head`` (the classification layer that transfer
replaces).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # names in annotations only
    from .config import InfluenceConfig


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(out + skip)


class SmallResNet(nn.Module):
    """A three-stage ResNet (widths w, 2w, 4w) for images of 8 to 64 px."""

    def __init__(self, num_classes, in_channels=1, width=16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2)
        )
        self.feature_dim = 4 * w
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        x = self.stages(self.stem(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        return self.head(self.features(x))


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier, randomly initialised (never downloaded)."""

    def __init__(self, arch, num_classes, in_channels=3):
        super().__init__()
        net = torchvision_builder(arch)(weights=None, num_classes=num_classes)
        head = _strip_head(net)
        self.body = net
        self.in_channels = in_channels
        self.feature_dim = head.in_features
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        if self.in_channels == 1:  # torchvision stems expect RGB
            x = x.expand(-1, 3, -1, -1)
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def torchvision_builder(arch):
    import torchvision

    try:
        return torchvision.models.get_model_builder(arch)
    except ValueError as e:
        raise ValueError(
            f"unknown architecture {arch!r}: use 'resnet_small' or a "
            f"torchvision classification model name such as 'resnet18'"
        ) from e


def _strip_head(net):
    """Replaces the classification head by an identity; returns the head."""
    head_name, head = _find_head(net)
    # the head may be nested, e.g. "classifier.6" in VGG
    parent_name, _, attr = head_name.rpartition(".")
    setattr(net.get_submodule(parent_name), attr, nn.Identity())
    return head


class FeatureExtractor(nn.Module):
    """A torchvision classifier without its head, with ``features(x)``.

    ``weights_path``: a state dict saved with ``torch.save`` (e.g. torchvision's
    own ``.pth`` files), loaded with ``weights_only=True``: never unpickled.
    Without it the network keeps its random initialisation.
    """

    def __init__(self, arch, weights_path=None):
        super().__init__()
        import torch

        net = torchvision_builder(arch)(weights=None)
        if weights_path is not None:  # the full classifier's, head included
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            net.load_state_dict(state)
        self.feature_dim = _strip_head(net).in_features
        self.body = net

    def features(self, x):
        return self.body(x)


def _find_head(net):
    """The last Linear layer: torchvision classifiers end in one."""
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no Linear classification head")
    return linears[-1]


# oneDNN 3.12's AVX-512 kernel for the weight gradient of a strided 1x1
# convolution in channels-last layout writes out of bounds with fewer than 16
# input channels and more than one thread (torch 2.14 on CPU; reproduced with
# resnet_small at width 4 and 8, batches of 9 and 11). Such networks train in
# the default layout on the CPU, and so do their inputs: a one-channel batch
# has strides that read as channels-last too, which would pick the same kernel.
# Every other network keeps channels-last (and its stores their bytes).
MIN_CHANNELS_LAST_CPU_CHANNELS = 16


def place_network(net: nn.Module, device) -> nn.Module:
    """``net`` on ``device``, in channels-last layout where that is safe (see above)."""
    net = net.to(device)
    if torch.device(device).type == "cpu" and any(
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and max(m.stride) > 1
        and m.in_channels < MIN_CHANNELS_LAST_CPU_CHANNELS
        for m in net.modules()
    ):
        if not getattr(net, "_inputs_in_default_layout", False):
            net.register_forward_pre_hook(_inputs_in_default_layout)
            net._inputs_in_default_layout = True
        return net
    return net.to(memory_format=torch.channels_last)


def _inputs_in_default_layout(module, args):
    x = args[0]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


def build_network(arch, num_classes, in_channels, width=16):
    if arch == "resnet_small":
        return SmallResNet(num_classes, in_channels=in_channels, width=width)
    return TorchvisionBackbone(arch, num_classes, in_channels=in_channels)


def network_for(config, num_classes):
    """The untrained network of ``config`` (architecture, channels, width and
    its BatchNorm constants) with ``num_classes`` outputs."""
    net = build_network(config.arch, num_classes, config.channels, config.width)
    if config.bn_momentum is not None or config.bn_eps is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if config.bn_momentum is not None:
                    module.momentum = config.bn_momentum
                if config.bn_eps is not None:
                    module.eps = config.bn_eps
    return net


def check_architecture(config: InfluenceConfig, num_classes: int) -> None:
    """Builds ``config.arch`` and runs a batch of two images at ``config.image_size``
    through it on the CPU; ``ValueError`` naming the problem if it cannot."""
    import torch

    try:
        net = network_for(config, num_classes)
        net.train()  # as in pretraining: BatchNorm with batch statistics
        x = torch.zeros(2, config.channels, config.image_size, config.image_size)
        with torch.no_grad():
            out = net(x)
            feats = net.features(x)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a misfit input
        raise ValueError(
            f"architecture {config.arch!r} does not run on "
            f"{config.image_size}x{config.image_size} images with "
            f"{config.channels} channel(s): {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}"
        ) from None
    if tuple(out.shape) != (2, num_classes) or feats.ndim != 2:
        raise ValueError(
            f"architecture {config.arch!r} gives outputs of shape "
            f"{tuple(out.shape)} and features {tuple(feats.shape)}; "
            f"expected (2, {num_classes}) and (2, D)"
        )
