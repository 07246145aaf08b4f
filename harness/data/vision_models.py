"""Small vision models the harness builds itself, loaded from local checkpoints.

`CifarResNet` is the CIFAR ResNet of He et al., Deep Residual Learning for Image
Recognition, CVPR 2016, section 4.2: a 3x3 stem with 16 filters, then three stages of
n basic blocks with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, global average
pooling and a linear classifier; 6n+2 weighted layers (n=3: ResNet-20, 0.27M
parameters). Shortcuts are the paper's option A: identity, and where the shape changes,
stride-2 subsampling plus zero-padding of the new channels, so no shortcut has weights.
Module names follow the common PyTorch CIFAR checkpoints (`conv1`, `bn1`,
`layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}`, `linear`), so their state dicts load as-is.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import HarnessError, first_line

CHECKPOINT_SUFFIXES = (".pth", ".pt")
CHECKPOINT_NAME = "ckpt.pth"


class OptionAShortcut(nn.Module):
    """Option A (He et al. 2016, sec. 3.3/4.2): subsample by 2 and zero-pad channels; no parameters."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (
            OptionAShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images; forward(pixel_values, labels=None) -> ImageClassifierOutput."""

    def __init__(self, num_blocks: int = 3, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = []
            for j in range(num_blocks):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(widths[-1], num_classes)
        for m in self.modules():  # He (Kaiming) normal initialisation, as the paper
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_):
        from transformers.modeling_outputs import ImageClassifierOutput

        out = F.relu(self.bn1(self.conv1(pixel_values)))
        out = self.layer3(self.layer2(self.layer1(out)))
        logits = self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(num_blocks=3, num_classes=num_classes)


def checkpoint_file(location: str | Path) -> Path | None:
    """The checkpoint a location names: a .pth/.pt file, or a directory holding ckpt.pth."""
    path = Path(location).expanduser()
    if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        return path
    if path.is_dir() and (path / CHECKPOINT_NAME).is_file():
        return path / CHECKPOINT_NAME
    return None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint: {net: ...}, {state_dict: ...} or a bare state dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: one clear line
        first = first_line(exc)
        raise HarnessError(f"could not read checkpoint {str(path)!r} ({first[:200]})") from None
    if isinstance(obj, dict):
        for key in ("net", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise HarnessError(
            f"checkpoint {str(path)!r} holds no state dict (expected {{net: state_dict}} or a state dict)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel saves prefix "module."


def load_resnet20(path: str | Path, num_classes: int) -> CifarResNet:
    """ResNet-20 with the checkpoint's weights; a fresh linear head when the class count differs."""
    state = load_state_dict(path)
    if "linear.weight" not in state:
        raise HarnessError(
            f"checkpoint {str(path)!r} is not a CIFAR ResNet (no 'linear.weight'; keys: {', '.join(list(state)[:4])}, ...)"
        )
    model = resnet20(num_classes=int(state["linear.weight"].shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise HarnessError(f"checkpoint {str(path)!r} does not fit ResNet-20 ({detail[:300]})") from None
    # Mark what came from the checkpoint as transformers marks what it loads, so that a head
    # replaced below is seen as fresh (harness.methods.base.head_is_fresh).
    for param in model.parameters():
        param._is_hf_initialized = True
    if model.num_classes != num_classes:
        model.linear = nn.Linear(model.linear.in_features, num_classes)
        nn.init.kaiming_normal_(model.linear.weight)
        model.num_classes = num_classes
    return model
