"""The growth ladder's models, built from code (no torchvision, no downloaded weights).

Each is an exact copy of a published architecture where one exists, module names and
initialisation included, so its parameter count and dense MACs can be checked against the
published figures:

* ResNet-18 (torchvision ``BasicBlock`` network): 11,689,512 parameters, ``_ops`` 1.814 GMACs.
* ResNet-152 (the bottleneck network of :mod:`models`, blocks 3, 8, 36, 3): 60,192,808
  parameters, ``_ops`` 11.514 GMACs.
* ViT-B/16 and ViT-L/16 at 224×224 (torchvision ``VisionTransformer``: patch convolution,
  class token, learned position embedding, pre-norm blocks of ``nn.MultiheadAttention`` and
  a GELU MLP, zero-initialised head): 86,567,656 and 304,326,632 parameters, ``_ops`` 17.564
  and 61.555 GMACs. Those ``_ops`` include attention: per block ``2 · 197² · D`` MACs for
  the scores and ``attn @ v`` besides the projections (ViT-B/16: 16.848 G without them,
  17.564 G with them).
* GPT-2 small and medium (the decoder of Radford et al. 2019 as nanoGPT writes it: token and
  position embeddings, pre-norm blocks of causal self-attention through
  ``F.scaled_dot_product_attention(is_causal=True)`` and a 4× tanh-GELU MLP, final
  LayerNorm, the LM head tied to the token embedding; vocabulary 50,257, context 1,024):
  12 layers × d_model 768 × 12 heads, 124,439,808 parameters, and 24 × 1024 × 16 heads,
  354,823,168 parameters (Hugging Face ``GPT2LMHeadModel.num_parameters()``).
* A plain MLP: ``depth`` × (``Linear(width, width)`` + ReLU), ``depth · (width² + width)``
  parameters, grown to about 10⁹.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from models import ResNet
from torch import Tensor, nn

__all__ = [
    "GPT2_MEDIUM_PARAMS",
    "GPT2_PARAMS",
    "RESNET18_MACS_G",
    "RESNET18_PARAMS",
    "RESNET152_MACS_G",
    "RESNET152_PARAMS",
    "VIT_B_16_MACS_G",
    "VIT_B_16_PARAMS",
    "VIT_L_16_MACS_G",
    "VIT_L_16_PARAMS",
    "gpt2",
    "gpt2_medium",
    "mlp",
    "resnet18",
    "resnet152",
    "vit_b_16",
    "vit_l_16",
]

#: torchvision ``ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]``
RESNET18_PARAMS = 11_689_512
#: torchvision ``_ops`` (GMACs at 224×224, convolutions + fc), as published (3 decimals)
RESNET18_MACS_G = 1.814
#: torchvision ``ResNet152_Weights.IMAGENET1K_V1.meta["num_params"]``
RESNET152_PARAMS = 60_192_808
RESNET152_MACS_G = 11.514
#: torchvision ``ViT_B_16_Weights.IMAGENET1K_V1.meta["num_params"]``
VIT_B_16_PARAMS = 86_567_656
#: torchvision ``_ops``: patch conv + every linear + attention (scores and attn @ v)
VIT_B_16_MACS_G = 17.564
#: torchvision ``ViT_L_16_Weights.IMAGENET1K_V1.meta["num_params"]``
VIT_L_16_PARAMS = 304_326_632
VIT_L_16_MACS_G = 61.555
#: Hugging Face ``GPT2LMHeadModel`` ("gpt2"): the tied LM head counted once
GPT2_PARAMS = 124_439_808
#: Hugging Face ``GPT2LMHeadModel`` ("gpt2-medium")
GPT2_MEDIUM_PARAMS = 354_823_168


# ----------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3×3 convolutions (the first carries the stride)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def resnet18() -> nn.Module:
    """ResNet-18 for ImageNet, randomly initialised (torchvision's if it is importable)."""
    try:
        from torchvision.models import resnet18 as tv_resnet18
    except ImportError:
        return ResNet((2, 2, 2, 2), block=BasicBlock)
    return tv_resnet18(weights=None)


def resnet152() -> nn.Module:
    """ResNet-152 for ImageNet, randomly initialised (torchvision's if it is importable)."""
    try:
        from torchvision.models import resnet152 as tv_resnet152
    except ImportError:
        return ResNet((3, 8, 36, 3))
    return tv_resnet152(weights=None)


# ----------------------------------------------------------------------------- ViT


class MLPBlock(nn.Sequential):
    """torchvision's ``MLPBlock``: Linear, GELU, Dropout, Linear, Dropout (``mlp.0``, ``mlp.3``)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """torchvision's ViT ``EncoderBlock``: pre-norm self-attention and MLP, both residual."""

    def __init__(self, num_heads: int, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim)

    def forward(self, inputs: Tensor) -> Tensor:
        x = self.ln_1(inputs)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inputs
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """torchvision's ViT ``Encoder``: position embedding, the blocks, a final LayerNorm."""

    def __init__(
        self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        blocks = OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, dim, mlp_dim)) for i in range(num_layers)
        )
        self.layers = nn.Sequential(blocks)
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """torchvision's ``VisionTransformer`` (no representation layer), module names included."""

    def __init__(
        self,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        dim: int,
        mlp_dim: int,
        image_size: int = 224,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.dim = dim
        self.conv_proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, num_classes)))
        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        # NB: torchvision zero-initialises the head: a fresh ViT's head weights are all zero
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16() -> nn.Module:
    """ViT-B/16 at 224×224, randomly initialised (torchvision's if it is importable)."""
    try:
        from torchvision.models import vit_b_16 as tv_vit_b_16
    except ImportError:
        return VisionTransformer(16, 12, 12, 768, 3072)
    return tv_vit_b_16(weights=None)


def vit_l_16() -> nn.Module:
    """ViT-L/16 at 224×224, randomly initialised (torchvision's if it is importable)."""
    try:
        from torchvision.models import vit_l_16 as tv_vit_l_16
    except ImportError:
        return VisionTransformer(16, 24, 16, 1024, 4096)
    return tv_vit_l_16(weights=None)


# ----------------------------------------------------------------------------- GPT


class CausalSelfAttention(nn.Module):
    """Fused q, k, v projection (``c_attn``), causal SDPA over the heads, out projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
            for z in self.c_attn(x).split(d, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class GPTMLP(nn.Module):
    """``c_fc`` to 4 × d_model, tanh GELU (GPT-2's ``gelu_new``), ``c_proj`` back."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPTBlock(nn.Module):
    """Pre-norm decoder block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = GPTMLP(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 as nanoGPT writes it: ``transformer.{wte,wpe,h.i,ln_f}`` and a tied ``lm_head``."""

    def __init__(
        self, num_layers: int, dim: int, num_heads: int, vocab: int = 50257, context: int = 1024
    ) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, dim),
                "wpe": nn.Embedding(context, dim),
                "h": nn.ModuleList(GPTBlock(dim, num_heads) for _ in range(num_layers)),
                "ln_f": nn.LayerNorm(dim),
            }
        )
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.transformer["wte"].weight  # tied: one parameter
        for name, p in self.named_parameters():  # nanoGPT's initialisation
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * num_layers))
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: Tensor) -> Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer["wte"](idx) + self.transformer["wpe"](positions)
        for block in self.transformer["h"]:
            x = block(x)
        return self.lm_head(self.transformer["ln_f"](x))


def gpt2() -> nn.Module:
    """GPT-2 small: 12 layers, d_model 768, 12 heads."""
    return GPT(12, 768, 12)


def gpt2_medium() -> nn.Module:
    """GPT-2 medium: 24 layers, d_model 1024, 16 heads."""
    return GPT(24, 1024, 16)


# ----------------------------------------------------------------------------- MLP


def mlp(width: int, depth: int = 8) -> nn.Module:
    """``depth`` × (``Linear(width, width)``, ReLU): ``depth · (width² + width)`` parameters."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)
