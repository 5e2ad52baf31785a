"""The compacted model (``ls.compact``): FLOP ratio against the speed-up it really delivers.

Per family, channel-pruned (structured magnitude pruning of the rows, the pruned rows'
biases zeroed so their channels carry no constant): the compacted model's FLOPs over the
masked model's (``FlopCounterMode``), and the measured speed-up of its forward over the
masked model's, in eager torch (``inference_mode``) and in onnxruntime (CPU provider, both
models exported the same way), at batch 1 and 64, on a quiet machine and beside ``--busy``
processes spinning. Medians of ``--repeats`` runs, dense and compacted interleaved; every
ratio is between runs in the same process under the same load.

Families: ResNet-50 (residual, BatchNorm; 50% of every conv's rows) at 96×96, the same
with its residual streams pruned as coupled groups (half of each stage's stream channels in
every block's last conv and the downsample, 50% of the inner convs' rows),
MobileNetV3-small (depthwise blocks; 50% of the depthwise rows) at 96×96, a VGG-style net
through flatten (50% of every conv's rows) at 32×32, a transformer MLP (768 → 3072 → 768,
half the hidden units) on 64 tokens.

    python benchmarks/bench_compact.py [--repeats 5] [--busy 2] [--threads 2] [--quick]
        [--families "ResNet-50 coupled,VGG-style"]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from load import busy
from models import mobilenet_v3_small, resnet50
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_sparsity as ls
from lightning_sparsity.ort import missing, ort_run
from lightning_sparsity.speed import medians


class Vgg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (64, 128, 256, 256):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(256 * 4, 512), nn.ReLU(), nn.Linear(512, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 2), 1))


class Mlp(nn.Module):
    def __init__(self, d: int = 768) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(x)))


def prune_rows(model: nn.Module, **choose: object) -> None:
    pruner = ls.MagnitudePruner(structured=True, allocation="uniform", **choose)  # type: ignore[arg-type]
    pruner.apply(model, 0.5)
    with torch.no_grad():
        for _, module, _ in pruner.targets(model):
            dead = module.weight.reshape(module.weight.shape[0], -1).abs().sum(1) == 0
            if module.bias is not None:
                module.bias[dead] = 0.0
    pruner.make_permanent(model)


def coupled_resnet50() -> nn.Module:
    """ResNet-50 pruned as Torch-Pruning's coupled groups do: half of each stage's residual
    stream (the same rows of every block's conv3 and the stage's downsample, by their
    summed L1 norm); the inner convs (conv1, conv2) by ``FAMILIES``' rule."""
    model = resnet50()
    with torch.no_grad():
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            convs = [block.conv3 for block in stage] + [stage[0].downsample[0]]
            score = sum(conv.weight.abs().sum((1, 2, 3)) for conv in convs)
            dead = score.argsort()[: score.numel() // 2]
            for conv in convs:
                conv.weight[dead] = 0.0
    return model


FAMILIES: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], dict]] = {
    "ResNet-50": (resnet50, lambda b: torch.randn(b, 3, 96, 96), {"include_types": ["Conv2d"]}),
    "ResNet-50 coupled": (
        coupled_resnet50,
        lambda b: torch.randn(b, 3, 96, 96),
        {"include": [r"layer\d\.\d+\.conv[12]"]},
    ),
    "MobileNetV3-small": (
        mobilenet_v3_small,
        lambda b: torch.randn(b, 3, 96, 96),
        {"parameters": lambda name, p: p.dim() == 4 and p.shape[1] == 1},  # depthwise convs
    ),
    "VGG-style": (Vgg, lambda b: torch.randn(b, 3, 32, 32), {"include_types": ["Conv2d"]}),
    "transformer MLP": (Mlp, lambda b: torch.randn(b, 64, 768), {"include": ["fc1"]}),
}


def flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    args = parser.parse_args()
    chosen = [f.strip() for f in args.families.split(",")]
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    torch.set_num_threads(args.threads)
    batches = (1,) if args.quick else (1, 64)
    repeats = 3 if args.quick else args.repeats
    with_ort = missing() is None
    print(
        f"bench_compact: torch {torch.__version__}, {args.threads} threads; medians of {repeats};"
        f" speed-up = masked dense model's time / compacted model's, same process and load"
        + ("" if with_ort else "; onnxruntime not installed: eager only")
    )
    head = f"{'family':18s} {'batch':>5s} {'FLOPs':>6s}"
    for load in ("quiet", f"{args.busy} busy"):
        head += f"  {'eager ' + load:>13s}" + (f"  {'ort ' + load:>11s}" if with_ort else "")
    print(head)
    for name in chosen:
        build, make_input, prune = FAMILIES[name]
        torch.manual_seed(0)
        model = build().eval()
        prune_rows(model, **prune)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = ls.compact(model, make_input(1))
        for batch in batches:
            x = make_input(batch)
            ratio = flops(small, x) / flops(model, x)
            with torch.inference_mode():
                torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-4)
            runs: dict[str, Callable[[], object]] = {
                "dense": lambda m=model, x=x: m(x),
                "compact": lambda m=small, x=x: m(x),
            }
            if with_ort:
                for key, which in (("ort dense", model), ("ort compact", small)):
                    runs[key] = session = ort_run(which, (x,), args.threads)
                    gap = session.gap()  # the same outputs as torch's, or no timing
                    if gap is None or gap > 1:
                        raise SystemExit(f"{name} {key}: not torch's output ({gap} tolerances)")
            line = f"{name:18s} {batch:5d} {ratio:6.3f}"
            for spinners in (0, args.busy):
                with busy(spinners), torch.inference_mode():
                    t = medians(runs, repeats, warmup=1)
                line += f"  {t['dense'] / t['compact']:12.2f}x"
                if with_ort:
                    line += f"  {t['ort dense'] / t['ort compact']:10.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
