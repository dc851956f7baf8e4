"""Random small CNNs for fuzzing graphprune, and the check each one must pass.

A model is a :class:`Program`: input shapes, a list of op specs (plain dicts,
so a failing program prints as something you can paste into a test) and the
values to return. :class:`FuzzNet` interprets the program in ``forward``; the
loop runs over Python data only, so ``torch.fx.symbolic_trace`` unrolls it
into a flat graph of real ops.

Programs come from :func:`generate`, which asks a *chooser* for every decision:
:class:`RandomChooser` (a seeded ``random.Random``, for ``benchmarks/fuzz.py``)
or :class:`HypothesisChooser` (hypothesis' ``draw``, for ``tests/test_fuzz.py``,
so failures shrink to a small program).

:func:`run_case` prunes one model with one set of settings and says what
happened: ``exact`` (compact == masked on a fresh input, same output
structure, input model untouched), ``refused`` (a documented graphprune
error) or ``failure`` (anything else: a mismatch, an exception from inside
torch, a VerificationError, a changed input model).
"""

from __future__ import annotations

import math
import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

# -- choosers ------------------------------------------------------------------


class RandomChooser:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def boolean(self, p: float = 0.5) -> bool:
        return self.rng.random() < p


class HypothesisChooser:
    """Decisions drawn from hypothesis; every choice shrinks to its first option
    (and booleans to False), so a failing program shrinks to a simple one."""

    def __init__(self, draw: Callable[[Any], Any]):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.draw(self.st.integers(0, len(options) - 1))]

    def boolean(self, p: float = 0.5) -> bool:
        return self.draw(self.st.integers(0, 999)) >= round(1000 * (1 - p))


# -- ops without a channel rule ------------------------------------------------


def fuzz_roll_channels(x: torch.Tensor) -> torch.Tensor:
    """An op graphprune has no rule for, which moves values across channels."""
    return torch.roll(x, 1, 1) * 0.5 + x


def fuzz_pointwise(x: torch.Tensor) -> torch.Tensor:
    """An op graphprune has no rule for, which happens to be per-channel."""
    return x * torch.sigmoid(x) + 0.1


torch.fx.wrap("fuzz_roll_channels")
torch.fx.wrap("fuzz_pointwise")
CUSTOM = {"roll": fuzz_roll_channels, "pointwise": fuzz_pointwise}


# -- activations: name -> forms (a module factory taking C, or a function) -------

ACTIVATIONS: dict[str, list[tuple[str, Any]]] = {
    "relu": [("module", lambda c: nn.ReLU()), ("fn", F.relu), ("fn", torch.relu), ("fn", lambda x: x.relu()),
             ("module", lambda c: nn.ReLU(inplace=True))],
    "relu6": [("module", lambda c: nn.ReLU6()), ("fn", F.relu6)],
    "leaky_relu": [("module", lambda c: nn.LeakyReLU(0.1)), ("fn", lambda x: F.leaky_relu(x, 0.2))],
    "elu": [("module", lambda c: nn.ELU()), ("fn", F.elu)],
    "selu": [("module", lambda c: nn.SELU())],
    "gelu": [("module", lambda c: nn.GELU()), ("fn", F.gelu), ("module", lambda c: nn.GELU("tanh"))],
    "silu": [("module", lambda c: nn.SiLU()), ("fn", F.silu), ("fn", lambda x: x * torch.sigmoid(x))],
    "mish": [("module", lambda c: nn.Mish()), ("fn", F.mish)],
    "hardswish": [("module", lambda c: nn.Hardswish()), ("fn", F.hardswish)],
    "hardsigmoid": [("module", lambda c: nn.Hardsigmoid()), ("fn", F.hardsigmoid)],
    "sigmoid": [("module", lambda c: nn.Sigmoid()), ("fn", torch.sigmoid), ("fn", lambda x: x.sigmoid())],
    "tanh": [("module", lambda c: nn.Tanh()), ("fn", torch.tanh)],
    "softplus": [("module", lambda c: nn.Softplus()), ("fn", F.softplus)],
    "hardtanh": [("module", lambda c: nn.Hardtanh()), ("fn", F.hardtanh)],
    "prelu": [("module", lambda c: nn.PReLU()), ("module", lambda c: nn.PReLU(c))],
    "identity": [("module", lambda c: nn.Identity()), ("module", lambda c: nn.Dropout(0.3))],
}

SCALAR = {
    "add": lambda x: x + 1.0,
    "mul": lambda x: x * 0.5,
    "sub": lambda x: x - 0.25,
    "rsub": lambda x: 1.0 - x,
    "neg": lambda x: -x,
    "div": lambda x: x / 2.0,
    "clamp": lambda x: x.clamp(-1.0, 1.0),
    "clamp_min": lambda x: torch.clamp(x, min=0.0),
    "abs": torch.abs,
    "square": lambda x: x.pow(2),
}


# -- the program ---------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """Shape of one value without the batch dim: a feature map (c, h, w) or a vector (c)."""

    c: int
    h: int = 0
    w: int = 0

    @property
    def is_map(self) -> bool:
        return self.h > 0


@dataclass
class Program:
    inputs: list[tuple[int, ...]]  # (c, h, w) per input
    ops: list[dict]
    outputs: list[int]
    output_form: str = "tensor"  # tensor, tuple, list, dict
    seed: int = 0
    batch: int = 2

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        model = (FuzzNet if len(self.inputs) == 1 else FuzzNet2)(self)
        randomise_statistics(model, self.seed)
        return model.eval()

    def example_inputs(self, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randn((self.batch, *shape), generator=g) for shape in self.inputs)


def op_outputs(spec: dict) -> int:
    return {"split": len(spec.get("sizes", ())) or spec.get("pieces", 1), "twice": 2}.get(spec["op"], 1)


def conv_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def randomise_statistics(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and norm affines, so a wrong slice shows."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.normal_(0, 0.2, generator=g)
                    m.running_var.uniform_(0.5, 1.5, generator=g)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.uniform_(-0.3, 0.3, generator=g)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 0.3, generator=g)
        for p in getattr(model, "params", {}).values():
            p.uniform_(0.5, 1.5, generator=g)


class FuzzNet(nn.Module):
    """Runs a :class:`Program`. Every op with weights owns ``layers[f"op{i}"]``."""

    def __init__(self, program: Program):
        super().__init__()
        self.program = program
        self.layers = nn.ModuleDict()
        self.params = nn.ParameterDict()
        metas = [Meta(*shape) for shape in program.inputs]
        for index, spec in enumerate(program.ops):
            make = getattr(self, f"make_{spec['op']}", None)
            if make is not None:
                make(f"op{index}", spec, [metas[i] for i in spec["src"]])
            metas.extend(spec["out"])

    def forward(self, x):
        return self.run((x,))

    def run(self, inputs: tuple) -> Any:
        values = list(inputs)
        for index, spec in enumerate(self.program.ops):
            args = [values[i] for i in spec["src"]]
            out = getattr(self, f"do_{spec['op']}")(f"op{index}", spec, args)
            values.extend(out if isinstance(out, list) else [out])
        outs = [values[i] for i in self.program.outputs]
        form = self.program.output_form
        if form == "tensor":
            return outs[0]
        if form == "dict":
            return {f"out{i}": v for i, v in enumerate(outs)}
        return tuple(outs) if form == "tuple" else list(outs)

    # -- constructors (make_*) and forward pieces (do_*), one pair per op kind --
    def make_conv(self, key: str, spec: dict, src: list[Meta]) -> None:
        self.layers[key] = nn.Conv2d(
            src[0].c, spec["cout"], spec["k"], stride=spec["stride"], padding=spec["padding"],
            dilation=spec["dilation"], groups=spec["groups"], bias=spec["bias"], padding_mode=spec["pmode"],
        )

    def do_conv(self, key, spec, args):
        return self.layers[key](args[0])

    def make_convt(self, key, spec, src):
        self.layers[key] = nn.ConvTranspose2d(
            src[0].c, spec["cout"], spec["k"], stride=spec["stride"], padding=spec["padding"],
            output_padding=spec["output_padding"], groups=spec["groups"], bias=spec["bias"],
        )

    def do_convt(self, key, spec, args):
        return self.layers[key](args[0])

    def do_twice(self, key, spec, args):
        conv = self.layers[f"op{spec['of']}"]
        return [conv(args[0]), conv(args[1])]

    def make_bn(self, key, spec, src):
        cls = nn.BatchNorm2d if src[0].is_map else nn.BatchNorm1d
        self.layers[key] = cls(src[0].c, affine=spec["affine"], track_running_stats=spec.get("stats", True))

    def do_bn(self, key, spec, args):
        return self.layers[key](args[0])

    def make_act(self, key, spec, src):
        kind, factory = ACTIVATIONS[spec["name"]][spec["form"]]
        if kind == "module":
            self.layers[key] = factory(src[0].c)

    def do_act(self, key, spec, args):
        kind, fn = ACTIVATIONS[spec["name"]][spec["form"]]
        return self.layers[key](args[0]) if kind == "module" else fn(args[0])

    def do_scalar(self, key, spec, args):
        return SCALAR[spec["name"]](args[0])

    def do_add(self, key, spec, args):
        form = spec.get("form", "op")
        out = args[0]
        for a in args[1:]:
            if form == "torch":
                out = torch.add(out, a)
            elif form == "method":
                out = out.add(a)
            elif form == "inplace" and out is not args[0]:
                out += a  # in place on a sum this op made
            else:
                out = out + a
        return out

    def do_sub(self, key, spec, args):
        return args[0] - args[1]

    def do_mul(self, key, spec, args):
        return args[0] * args[1]

    def do_div(self, key, spec, args):
        return args[0] / (args[1].abs() + 1.0)

    def do_maximum(self, key, spec, args):
        return torch.maximum(args[0], args[1]) if spec["max"] else torch.minimum(args[0], args[1])

    def do_cat(self, key, spec, args):
        return torch.cat(args, dim=spec["dim"])

    def do_split(self, key, spec, args):
        x, dim = args[0], spec["dim"]
        pieces = op_outputs(spec)
        if spec["how"] == "chunk":
            parts = x.chunk(pieces, dim)
            return [parts[i] for i in range(pieces)]
        if spec["how"] == "torch.split":
            parts = torch.split(x, spec["sizes"], dim)
            return [parts[i] for i in range(pieces)]
        if spec["how"] == "slice":
            a = spec["sizes"][0]
            return [x[:, :a], x[:, a:]] if dim == 1 else [x[..., :a], x[..., a:]]
        if spec["how"] == "narrow":
            a = spec["sizes"][0]
            return [x.narrow(dim, 0, a), torch.narrow(x, dim, a, x.shape[dim] - a)]
        parts = x.split(spec["sizes"], dim)
        return [parts[i] for i in range(pieces)]

    def make_se(self, key, spec, src):
        c, hidden = src[0].c, spec["hidden"]
        if spec["fc"] == "conv":
            fc1, fc2 = nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, c, 1)
        else:
            fc1, fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.layers[key] = nn.ModuleDict({"fc1": fc1, "fc2": fc2})

    def do_se(self, key, spec, args):
        x, m = args[0], self.layers[key]
        s = F.adaptive_avg_pool2d(x, 1) if spec["pool"] == "adaptive" else x.mean((2, 3), keepdim=True)
        if spec["fc"] == "linear":
            s = s.flatten(1)
        s = m["fc2"](F.relu(m["fc1"](s)) if spec["act"] == "relu" else F.silu(m["fc1"](s)))
        s = torch.sigmoid(s) if spec["gate"] == "sigmoid" else F.hardsigmoid(s)
        if spec["fc"] == "linear":
            c = spec["c"]
            s = s.view(-1, c, 1, 1) if spec["view"] == "literal" else s[:, :, None, None]
        return x * s

    def make_shuffle(self, key, spec, src):
        if spec["how"] == "module":
            self.layers[key] = nn.ChannelShuffle(spec["groups"])

    def do_shuffle(self, key, spec, args):
        x, g = args[0], spec["groups"]
        if spec["how"] == "module":
            return self.layers[key](x)
        if spec["how"] == "function":
            return F.channel_shuffle(x, g)
        if spec["how"] == "literal":
            c, h, w = spec["chw"]
            return x.reshape(-1, g, c // g, h, w).transpose(1, 2).reshape(-1, c, h, w)
        b, c, h, w = x.size()
        return x.contiguous().view(b, g, c // g, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)

    def make_up(self, key, spec, src):
        if spec["how"] == "module":
            self.layers[key] = nn.Upsample(scale_factor=2, mode=spec["mode"])

    def do_up(self, key, spec, args):
        if spec["how"] == "module":
            return self.layers[key](args[0])
        return F.interpolate(args[0], scale_factor=2, mode=spec["mode"])

    def make_pool(self, key, spec, src):
        how = spec["how"]
        if how == "max2":
            self.layers[key] = nn.MaxPool2d(2)
        elif how == "avg2":
            self.layers[key] = nn.AvgPool2d(2)
        elif how == "max3":
            self.layers[key] = nn.MaxPool2d(3, 1, 1)
        elif how == "avg3":
            self.layers[key] = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        elif how == "adaptive_avg":
            self.layers[key] = nn.AdaptiveAvgPool2d(spec["size"])
        elif how == "adaptive_max":
            self.layers[key] = nn.AdaptiveMaxPool2d(spec["size"])

    def do_pool(self, key, spec, args):
        x, how = args[0], spec["how"]
        if how == "f_max2":
            return F.max_pool2d(x, 2)
        if how == "mean":
            return x.mean((2, 3), keepdim=True)
        if how == "amax":
            return x.amax(dim=(-2, -1), keepdim=True)
        return self.layers[key](x)

    def make_flatten(self, key, spec, src):
        if spec["how"] == "module":
            self.layers[key] = nn.Flatten()

    def do_flatten(self, key, spec, args):
        x, how = args[0], spec["how"]
        if how == "module":
            return self.layers[key](x)
        if how == "torch":
            return torch.flatten(x, 1)
        if how == "method":
            return x.flatten(1)
        if how == "view":
            return x.contiguous().view(x.size(0), -1)
        return x.reshape(-1, spec["features"])

    def make_linear(self, key, spec, src):
        self.layers[key] = nn.Linear(src[0].c, spec["cout"], bias=spec["bias"])

    def do_linear(self, key, spec, args):
        return self.layers[key](args[0])

    def make_cl_linear(self, key, spec, src):
        parts = {"fc": nn.Linear(src[0].c, spec["cout"], bias=spec["bias"])}
        if spec["norm"]:
            parts["norm"] = nn.LayerNorm(src[0].c)
        self.layers[key] = nn.ModuleDict(parts)

    def do_cl_linear(self, key, spec, args):
        m = self.layers[key]
        y = args[0].permute(0, 2, 3, 1)
        if spec["norm"]:
            y = m["norm"](y)
        return m["fc"](y).permute(0, 3, 1, 2)

    def make_norm(self, key, spec, src):
        m = src[0]
        if spec["how"] == "layer":
            self.layers[key] = nn.LayerNorm([m.c, m.h, m.w] if m.is_map else m.c)
        elif spec["how"] == "group":
            self.layers[key] = nn.GroupNorm(spec["groups"], m.c)

    def do_norm(self, key, spec, args):
        x, how = args[0], spec["how"]
        if how == "f_group":
            return F.group_norm(x, spec["groups"])
        if how == "f_layer":
            return F.layer_norm(x, x.shape[1:])
        return self.layers[key](x)

    def make_attn(self, key, spec, src):
        how = spec.get("how", "mha")
        if how == "mha":
            self.layers[key] = nn.MultiheadAttention(src[0].c, spec["heads"], batch_first=True)
        else:
            self.layers[key] = FuzzAttention(src[0].c, spec["heads"], sdpa=how == "sdpa")

    def do_attn(self, key, spec, args):
        x = args[0]
        tokens = x.flatten(2).transpose(1, 2)  # (N, positions, C)
        if spec.get("how", "mha") == "mha":
            y, _ = self.layers[key](tokens, tokens, tokens, need_weights=spec["weights"])
        else:
            y = self.layers[key](tokens)
        return y.transpose(1, 2).unflatten(2, tuple(spec["hw"]))

    def do_custom(self, key, spec, args):
        # Called by their global names: torch.fx.wrap makes those names leaves.
        if spec["name"] == "roll":
            return fuzz_roll_channels(args[0])
        return fuzz_pointwise(args[0])

    def do_chanreduce(self, key, spec, args):
        x = args[0]
        if spec["how"] == "mean":
            return x.mean(1, keepdim=True)
        if spec["how"] == "amax":
            return torch.amax(x, 1, keepdim=True)
        return x.sum(dim=1, keepdim=True)

    def do_bcast(self, key, spec, args):
        return args[0] * args[1] if spec["mul"] else args[0] + args[1]

    def do_softmax(self, key, spec, args):
        x = args[0]
        if spec["dim"] == 1:
            return F.softmax(x, dim=1)
        return x.flatten(2).softmax(-1).view_as(x)

    def make_param(self, key, spec, src):
        shape = (src[0].c, 1, 1) if src[0].is_map else (src[0].c,)
        self.params[key] = nn.Parameter(torch.ones(shape))

    def do_param(self, key, spec, args):
        p = self.params[key]
        return args[0] * p if spec["mul"] else args[0] + p

    def make_fconv(self, key, spec, src):
        self.params[key] = nn.Parameter(torch.randn(spec["cout"], src[0].c, 1, 1) * 0.5)

    def do_fconv(self, key, spec, args):
        return F.conv2d(args[0], self.params[key])

    def do_interleave(self, key, spec, args):
        return torch.stack([args[0], args[1]], 2).flatten(1, 2)

    def do_pixel_shuffle(self, key, spec, args):
        return F.pixel_shuffle(args[0], 2)

    def do_gather(self, key, spec, args):
        return args[0][:, spec["index"]]

    def do_roundtrip(self, key, spec, args):
        x, how = args[0], spec["how"]
        if how == "unsqueeze":
            return x.unsqueeze(2).squeeze(2)
        if how == "flatten_view":
            return x.flatten(2).view(x.shape[0], -1, x.shape[2], x.shape[3])
        if how == "flatten_literal":
            c, h, w = spec["chw"]
            return x.reshape(-1, c, h * w).reshape(-1, c, h, w)
        if how == "unflatten":
            c, h, w = spec["chw"]
            return x.flatten(1).unflatten(1, (c, h, w))
        if how == "permute":
            return x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)
        return x.transpose(1, 3).contiguous().transpose(1, 3)

    def do_pad(self, key, spec, args):
        if spec["mode"] == "constant":
            return F.pad(args[0], (1, 1, 1, 1), value=spec["value"])
        return F.pad(args[0], (1, 0, 1, 0), mode=spec["mode"])


class FuzzAttention(nn.Module):
    """Self-attention written out: heads split by a reshape, the scale
    computed from the input's width (pruning changes it), SDPA or matmuls."""

    def __init__(self, dim: int, heads: int, sdpa: bool):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class FuzzNet2(FuzzNet):
    def forward(self, x, y):
        return self.run((x, y))


# -- the generator ---------------------------------------------------------------

OP_WEIGHTS = {
    "conv": 10, "bn": 5, "act": 8, "add": 6, "cat": 4, "split": 3, "convt": 2, "scalar": 2,
    "sub": 1, "mul": 2, "div": 1, "maximum": 1, "se": 2, "shuffle": 2, "up": 2, "pool": 3,
    "flatten": 2, "linear": 2, "cl_linear": 1, "norm": 2, "custom": 1, "twice": 1, "chanreduce": 1,
    "bcast": 1, "softmax": 1, "param": 1, "pad": 1, "fconv": 1, "interleave": 1, "pixel_shuffle": 1,
    "gather": 1, "roundtrip": 2, "attn": 1,
}
MAX_C = 12
MAX_FEATURES = 192


class Builder:
    """Grows a program one op at a time, tracking the shape of every value."""

    def __init__(self, choose: Any, metas: list[Meta]):
        self.choose = choose
        self.metas = list(metas)
        self.num_inputs = len(metas)
        self.ops: list[dict] = []

    def emit(self, spec: dict, out: list[Meta]) -> list[int]:
        spec["out"] = out
        self.ops.append(spec)
        first = len(self.metas)
        self.metas.extend(out)
        return list(range(first, len(self.metas)))

    def pick(self, want: Callable[[Meta], bool], prefer_recent: bool = True) -> int | None:
        found = [i for i, m in enumerate(self.metas) if want(m)]
        if not found:
            return None
        produced = [i for i in found if i >= self.num_inputs]
        if produced and self.choose.boolean(0.85):  # graph inputs pin what they touch: use them less
            found = produced
        if prefer_recent and self.choose.boolean(0.6):
            return found[-1]
        return self.choose.choice(found[::-1])

    def channels(self, lo: int = 1) -> int:
        return self.choose.integer(lo, MAX_C)

    # -- one method per op kind; each returns False where it cannot apply --
    def conv(self, src: int | None = None, cout: int | None = None, keep_size: bool = False) -> int:
        if src is None:
            src = self.pick(lambda m: m.is_map)
        m, ch = self.metas[src], self.choose
        k = 1 if keep_size and ch.boolean(0.5) else ch.choice([1, 3, 2])
        stride = 1 if keep_size else ch.choice([1, 1, 2])
        dilation = ch.choice([1, 1, 2]) if k > 1 else 1
        span = dilation * (k - 1)
        if keep_size:
            if span % 2:
                k, dilation, span = 1, 1, 0
            padding = "same" if span and ch.boolean(0.3) else span // 2
        else:
            padding = ch.integer(0, span // 2 + 1) if span else 0
        pad = span // 2 if padding == "same" else padding
        pmode = "zeros"
        if pad and ch.boolean(0.3):
            pmode = ch.choice(["reflect", "replicate", "circular"])
            if pad >= min(m.h, m.w):
                pmode = "zeros"
        h, w = conv_size(m.h, k, stride, pad, dilation), conv_size(m.w, k, stride, pad, dilation)
        if h < 1 or w < 1:
            k, stride, padding, dilation, h, w = 1, 1, 0, 1, m.h, m.w
        groups = 1
        if cout is None:
            cout = self.channels()
            kind = ch.choice(["dense", "dense", "depthwise", "grouped", "multiplier"])
            if kind == "depthwise":
                groups, cout = m.c, m.c
            elif kind == "multiplier" and m.c * 2 <= MAX_C:
                groups, cout = m.c, m.c * 2
            elif kind == "grouped":
                options = [g for g in (2, 3, 4) if m.c % g == 0]
                if options:
                    groups = ch.choice(options)
                    cout = groups * ch.integer(1, max(1, MAX_C // groups))
        elif ch.boolean(0.2):
            groups = m.c if cout == m.c else 1  # depthwise into a residual
        spec = dict(op="conv", src=[src], cout=cout, k=k, stride=stride, padding=padding, dilation=dilation,
                    groups=groups, bias=ch.boolean(0.5), pmode=pmode)
        return self.emit(spec, [Meta(cout, h, w)])[0]

    def convt(self) -> bool:
        src = self.pick(lambda m: m.is_map and m.h <= 8 and m.w <= 8)
        if src is None:
            return False
        m, ch = self.metas[src], self.choose
        k, stride = ch.choice([(2, 2), (3, 1), (3, 2), (1, 1)])
        padding = ch.integer(0, (k - 1) // 2)
        output_padding = ch.integer(0, stride - 1) if stride > 1 else 0
        groups, cout = 1, self.channels()
        if ch.boolean(0.2):
            options = [g for g in (2, 3) if m.c % g == 0]
            if options:
                groups = ch.choice(options)
                cout = groups * ch.integer(1, max(1, MAX_C // groups))

        def size(n: int) -> int:
            return (n - 1) * stride - 2 * padding + (k - 1) + output_padding + 1

        spec = dict(op="convt", src=[src], cout=cout, k=k, stride=stride, padding=padding,
                    output_padding=output_padding, groups=groups, bias=ch.boolean(0.5))
        self.emit(spec, [Meta(cout, size(m.h), size(m.w))])
        return True

    def twice(self) -> bool:
        convs = [i for i, op in enumerate(self.ops) if op["op"] == "conv" and op["pmode"] == "zeros"]
        if not convs:
            return False
        j = self.choose.choice(convs)
        spec_of = self.ops[j]
        cin = self.metas[spec_of["src"][0]].c
        srcs = [i for i, m in enumerate(self.metas) if m.is_map and m.c == cin]
        a, b = self.choose.choice(srcs), self.choose.choice(srcs)
        outs = []
        for s in (a, b):
            m = self.metas[s]
            pad = spec_of["padding"]
            if pad == "same":
                pad = spec_of["dilation"] * (spec_of["k"] - 1) // 2
            args = (spec_of["k"], spec_of["stride"], pad, spec_of["dilation"])
            h, w = conv_size(m.h, *args), conv_size(m.w, *args)
            if h < 1 or w < 1:
                return False
            outs.append(Meta(spec_of["cout"], h, w))
        self.emit(dict(op="twice", src=[a, b], of=j), outs)
        return True

    def bn(self) -> bool:
        src = self.pick(lambda m: True)
        spec = dict(op="bn", src=[src], affine=self.choose.boolean(0.85), stats=self.choose.boolean(0.9))
        self.emit(spec, [self.metas[src]])
        return True

    def act(self) -> bool:
        src = self.pick(lambda m: True)
        name = self.choose.choice(list(ACTIVATIONS))
        form = self.choose.integer(0, len(ACTIVATIONS[name]) - 1)
        self.emit(dict(op="act", src=[src], name=name, form=form), [self.metas[src]])
        return True

    def scalar(self) -> bool:
        src = self.pick(lambda m: True)
        self.emit(dict(op="scalar", src=[src], name=self.choose.choice(list(SCALAR))), [self.metas[src]])
        return True

    def partner(self, src: int) -> int:
        """A value shaped like ``src``: an existing one, or a new conv (or linear) making one."""
        m = self.metas[src]
        same = [i for i, n in enumerate(self.metas) if n == m and i != src]
        if same and self.choose.boolean(0.7):
            return self.choose.choice(same)
        if m.is_map:
            base = self.pick(lambda n: n.is_map and n.h == m.h and n.w == m.w, prefer_recent=False)
            return self.conv(base, cout=m.c, keep_size=True)
        base = self.pick(lambda n: not n.is_map, prefer_recent=False)
        return self.emit(dict(op="linear", src=[base], cout=m.c, bias=self.choose.boolean()), [m])[0]

    def add(self) -> bool:
        src = self.pick(lambda m: True)
        n = self.choose.choice([2, 2, 3])
        srcs = [src] + [self.partner(src) for _ in range(n - 1)]
        form = self.choose.choice(["op", "torch", "method", "inplace"])
        self.emit(dict(op="add", src=srcs, form=form), [self.metas[src]])
        return True

    def binary(self, op: str, **extra: Any) -> bool:
        src = self.pick(lambda m: True)
        other = self.partner(src)
        self.emit(dict(op=op, src=[src, other], **extra), [self.metas[src]])
        return True

    def sub(self) -> bool:
        return self.binary("sub")

    def mul(self) -> bool:
        return self.binary("mul")

    def div(self) -> bool:
        return self.binary("div")

    def maximum(self) -> bool:
        return self.binary("maximum", max=self.choose.boolean())

    def cat(self) -> bool:
        src = self.pick(lambda m: True)
        m, ch = self.metas[src], self.choose
        if m.is_map and ch.boolean(0.1):  # along the height, where channels must agree
            self.emit(dict(op="cat", src=[src, self.partner(src)], dim=2), [Meta(m.c, 2 * m.h, m.w)])
            return True

        def fits(n: Meta) -> bool:
            return (n.h, n.w) == (m.h, m.w) if m.is_map else not n.is_map

        srcs = [src]
        for _ in range(ch.choice([1, 1, 2])):
            if ch.boolean(0.7):
                srcs.append(ch.choice([i for i, n in enumerate(self.metas) if fits(n)]))
            elif m.is_map:
                srcs.append(self.conv(self.pick(fits, prefer_recent=False), keep_size=True))
            else:
                srcs.append(self.partner(src))
        total = sum(self.metas[i].c for i in srcs)
        dim = ch.choice([1, 1, -3]) if m.is_map else ch.choice([1, -1])
        self.emit(dict(op="cat", src=srcs, dim=dim), [Meta(total, m.h, m.w)])
        return True

    def split(self) -> bool:
        src = self.pick(lambda m: m.c >= 2)
        if src is None:
            return False
        m, ch = self.metas[src], self.choose
        how = ch.choice(["chunk", "split", "torch.split", "slice", "narrow"])
        if how == "chunk":
            pieces = ch.choice([2, 2, 3])
            if m.c % pieces:
                pieces = 2 if m.c % 2 == 0 else 0
            if pieces:
                step = m.c // pieces
                spec = dict(op="split", src=[src], how="chunk", pieces=pieces, dim=1)
                self.emit(spec, [Meta(step, m.h, m.w)] * pieces)
                return True
            how = "split"
        a = ch.integer(1, m.c - 1)
        sizes = [a, m.c - a]
        if how == "split" and m.c >= 3 and ch.boolean(0.3):
            b = ch.integer(1, m.c - a - 1) if m.c - a > 1 else 0
            if b:
                sizes = [a, b, m.c - a - b]
        spec = dict(op="split", src=[src], how=how, sizes=sizes, dim=1)
        self.emit(spec, [Meta(s, m.h, m.w) for s in sizes])
        return True

    def se(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        m, ch = self.metas[src], self.choose
        spec = dict(op="se", src=[src], hidden=ch.integer(1, max(1, m.c // 2)), fc=ch.choice(["conv", "linear"]),
                    gate=ch.choice(["sigmoid", "hardsigmoid"]), act=ch.choice(["relu", "silu"]),
                    pool=ch.choice(["adaptive", "mean"]), view=ch.choice(["literal", "index"]), c=m.c)
        self.emit(spec, [m])
        return True

    def shuffle(self) -> bool:
        src = self.pick(lambda m: m.is_map and any(m.c % g == 0 for g in (2, 3)) and m.c > 2)
        if src is None:
            return False
        m, ch = self.metas[src], self.choose
        groups = ch.choice([g for g in (2, 3) if m.c % g == 0])
        how = ch.choice(["module", "function", "manual", "literal"])
        self.emit(dict(op="shuffle", src=[src], groups=groups, how=how, chw=[m.c, m.h, m.w]), [m])
        return True

    def up(self) -> bool:
        src = self.pick(lambda m: m.is_map and m.h <= 8 and m.w <= 8)
        if src is None:
            return False
        m = self.metas[src]
        spec = dict(op="up", src=[src], how=self.choose.choice(["module", "function"]),
                    mode=self.choose.choice(["nearest", "bilinear"]))
        self.emit(spec, [Meta(m.c, 2 * m.h, 2 * m.w)])
        return True

    def pool(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        m, ch = self.metas[src], self.choose
        how = ch.choice(["max2", "avg2", "max3", "avg3", "f_max2", "adaptive_avg", "adaptive_max", "mean", "amax"])
        if how in ("max2", "avg2", "f_max2") and min(m.h, m.w) < 2:
            how = "max3"
        size = 1
        if how.startswith("adaptive"):
            size = ch.choice([1, 2])
        h, w = {"max2": (m.h // 2, m.w // 2), "avg2": (m.h // 2, m.w // 2), "f_max2": (m.h // 2, m.w // 2),
                "max3": (m.h, m.w), "avg3": (m.h, m.w), "mean": (1, 1), "amax": (1, 1)}.get(how, (size, size))
        self.emit(dict(op="pool", src=[src], how=how, size=size), [Meta(m.c, h, w)])
        return True

    def flatten(self) -> bool:
        src = self.pick(lambda m: m.is_map and m.c * m.h * m.w <= MAX_FEATURES)
        if src is None:
            src = self.pick(lambda m: m.is_map)
            m = self.metas[src]
            self.emit(dict(op="pool", src=[src], how="adaptive_avg", size=1), [Meta(m.c, 1, 1)])
            src = len(self.metas) - 1
        m = self.metas[src]
        features = m.c * m.h * m.w
        how = self.choose.choice(["torch", "method", "module", "view", "reshape"])
        flat = self.emit(dict(op="flatten", src=[src], how=how, features=features), [Meta(features)])[0]
        if self.choose.boolean(0.8):
            cout = self.channels()
            self.emit(dict(op="linear", src=[flat], cout=cout, bias=self.choose.boolean()), [Meta(cout)])
        return True

    def linear(self) -> bool:
        src = self.pick(lambda m: not m.is_map)
        if src is None:
            return False
        cout = self.channels()
        self.emit(dict(op="linear", src=[src], cout=cout, bias=self.choose.boolean()), [Meta(cout)])
        return True

    def cl_linear(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        cout = self.channels()
        m = self.metas[src]
        spec = dict(op="cl_linear", src=[src], cout=cout, bias=self.choose.boolean(), norm=self.choose.boolean())
        self.emit(spec, [Meta(cout, m.h, m.w)])
        return True

    def norm(self) -> bool:
        src = self.pick(lambda m: True)
        m, ch = self.metas[src], self.choose
        how = ch.choice(["layer", "group", "f_group", "f_layer"]) if m.is_map else "layer"
        groups = ch.choice([g for g in (1, 2, 3, 4) if m.c % g == 0])
        self.emit(dict(op="norm", src=[src], how=how, groups=groups), [m])
        return True

    def attn(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        if src is None:
            return False
        m = self.metas[src]
        heads = self.choose.choice([h for h in (1, 2, 3, 4) if m.c % h == 0])
        how = self.choose.choice(["mha", "sdpa", "matmul"])
        self.emit(dict(op="attn", src=[src], heads=heads, weights=self.choose.boolean(), hw=[m.h, m.w], how=how), [m])
        return True

    def custom(self) -> bool:
        src = self.pick(lambda m: True)
        self.emit(dict(op="custom", src=[src], name=self.choose.choice(list(CUSTOM))), [self.metas[src]])
        return True

    def chanreduce(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        m = self.metas[src]
        self.emit(dict(op="chanreduce", src=[src], how=self.choose.choice(["mean", "amax", "sum"])),
                  [Meta(1, m.h, m.w)])
        return True

    def bcast(self) -> bool:
        src = self.pick(lambda m: m.is_map and m.c > 1)
        if src is None:
            return False
        m, ch = self.metas[src], self.choose
        if ch.boolean():  # a spatial map shared by every channel
            other = self.pick(lambda n: n.is_map and n.c == 1 and (n.h, n.w) == (m.h, m.w), prefer_recent=False)
            if other is None:
                self.emit(dict(op="chanreduce", src=[src], how="mean"), [Meta(1, m.h, m.w)])
                other = len(self.metas) - 1
        else:  # one value per channel, from another branch
            other = self.pick(lambda n: n.is_map and n.c == m.c and n.h == n.w == 1, prefer_recent=False)
            if other is None:
                base = self.pick(lambda n: n.is_map, prefer_recent=False)
                pooled = self.emit(dict(op="pool", src=[base], how="mean", size=1), [Meta(self.metas[base].c, 1, 1)])
                other = self.conv(pooled[0], cout=m.c, keep_size=True)
        self.emit(dict(op="bcast", src=[src, other], mul=ch.boolean()), [m])
        return True

    def softmax(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        self.emit(dict(op="softmax", src=[src], dim=self.choose.choice([1, 2])), [self.metas[src]])
        return True

    def param(self) -> bool:
        src = self.pick(lambda m: True)
        self.emit(dict(op="param", src=[src], mul=self.choose.boolean()), [self.metas[src]])
        return True

    def fconv(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        m, cout = self.metas[src], self.channels()
        self.emit(dict(op="fconv", src=[src], cout=cout), [Meta(cout, m.h, m.w)])
        return True

    def interleave(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        other = self.partner(src)
        m = self.metas[src]
        self.emit(dict(op="interleave", src=[src, other]), [Meta(2 * m.c, m.h, m.w)])
        return True

    def pixel_shuffle(self) -> bool:
        src = self.pick(lambda m: m.is_map and m.c % 4 == 0)
        if src is None:
            return False
        m = self.metas[src]
        self.emit(dict(op="pixel_shuffle", src=[src]), [Meta(m.c // 4, 2 * m.h, 2 * m.w)])
        return True

    def gather(self) -> bool:
        src = self.pick(lambda m: m.c >= 2)
        if src is None:
            return False
        m, ch = self.metas[src], self.choose
        index = [ch.integer(0, m.c - 1) for _ in range(ch.integer(1, m.c + 1))]
        self.emit(dict(op="gather", src=[src], index=index), [Meta(len(index), m.h, m.w)])
        return True

    def roundtrip(self) -> bool:
        src = self.pick(lambda m: m.is_map)
        m = self.metas[src]
        how = self.choose.choice(["unsqueeze", "flatten_view", "flatten_literal", "unflatten", "permute", "transpose"])
        self.emit(dict(op="roundtrip", src=[src], how=how, chw=[m.c, m.h, m.w]), [m])
        return True

    def pad(self) -> bool:
        src = self.pick(lambda m: m.is_map and m.h >= 2 and m.w >= 2)
        if src is None:
            return False
        m = self.metas[src]
        mode = self.choose.choice(["constant", "reflect", "replicate"])
        value = self.choose.choice([0.0, 0.5])
        h, w = (m.h + 2, m.w + 2) if mode == "constant" else (m.h + 1, m.w + 1)
        self.emit(dict(op="pad", src=[src], mode=mode, value=value), [Meta(m.c, h, w)])
        return True


def generate(choose: Any, max_ops: int = 10) -> Program:
    """A random program: 1 or 2 inputs, up to ``max_ops`` op kinds (some kinds
    add helper convs), 1 to 3 outputs in one of four output structures."""
    inputs = [(choose.integer(1, 4), choose.integer(4, 10), choose.integer(4, 10))]
    if choose.boolean(0.15):
        h, w = inputs[0][1:] if choose.boolean() else (choose.integer(4, 8), choose.integer(4, 8))
        inputs.append((choose.integer(1, 4), h, w))
    builder = Builder(choose, [Meta(*s) for s in inputs])
    for i in range(len(inputs)):  # a stem conv, as real models have
        if choose.boolean(0.85):
            builder.conv(i)
    kinds, weights = list(OP_WEIGHTS), list(OP_WEIGHTS.values())
    cumulative = [sum(weights[: i + 1]) for i in range(len(weights))]
    for _ in range(choose.integer(1, max_ops)):
        r = choose.integer(0, cumulative[-1] - 1)
        kind = kinds[next(i for i, c in enumerate(cumulative) if r < c)]
        if kind == "conv" or not getattr(builder, kind)():
            if kind == "conv" or builder.pick(lambda m: m.is_map) is not None:
                builder.conv()
    first_op_value = len(inputs)
    produced = list(range(first_op_value, len(builder.metas)))
    if not produced:  # no op at all
        produced = [builder.conv()]
    used = {i for op in builder.ops for i in op["src"]}
    leaves = [i for i in produced if i not in used and i != produced[-1]]
    outputs = [produced[-1]]
    for i in leaves[::-1][:2]:
        if choose.boolean(0.6):
            outputs.append(i)
    for n, i in enumerate(outputs):  # like real models, most outputs come from a head layer
        if choose.boolean(0.8):
            m = builder.metas[i]
            if m.is_map:
                outputs[n] = builder.conv(i, cout=builder.channels(), keep_size=True)
            else:
                cout = builder.channels()
                outputs[n] = builder.emit(dict(op="linear", src=[i], cout=cout, bias=choose.boolean()),
                                          [Meta(cout)])[0]
    form = "tensor" if len(outputs) == 1 and choose.boolean(0.7) else choose.choice(["tuple", "list", "dict"])
    return Program(inputs, builder.ops, outputs, form, seed=choose.integer(0, 2**31 - 1))


# -- settings and the check --------------------------------------------------------


@dataclass
class Settings:
    ratio: float = 0.5
    criterion: str = "l1"
    mode: str = "per_layer"
    round_to: int = 1
    min_channels: int = 1
    ignore: tuple[str, ...] = ()
    verify: bool | str = True
    frontend: str = "auto"
    heads: str = "dims"

    def kwargs(self) -> dict:
        return dict(ratio=self.ratio, criterion=self.criterion, mode=self.mode, round_to=self.round_to,
                    min_channels=self.min_channels, ignore=self.ignore, verify=self.verify,
                    frontend=self.frontend, heads=self.heads)


def draw_settings(choose: Any, model: nn.Module) -> Settings:
    names = [n for n, _ in model.named_modules() if n]
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    ignore = ()
    if names and choose.boolean(0.25):
        ignore = (choose.choice(leaves if leaves and choose.boolean(0.9) else names),)
    return Settings(
        ratio=choose.choice([0.5, 0.25, 0.3, 0.7, 0.9, 0.99, 0.5, 0.0]),
        criterion=choose.choice(["l1", "l2", "fpgm", "bn", "random"]),
        mode=choose.choice(["per_layer", "group", "global"]),
        round_to=choose.choice([1, 1, 2, 4, 8]),
        min_channels=choose.choice([1, 1, 2]),
        ignore=ignore,
        verify=choose.choice([True, "report", False]),
        heads=choose.choice(["dims", "dims", "whole"]),  # drawn last: the draws before it stay as they were
    )


@dataclass
class Outcome:
    kind: str  # exact, refused, failure
    detail: str = ""
    smaller: bool = False
    rel_error: float = 0.0
    trace: str = ""

    @property
    def reason(self) -> str:
        return self.detail.split(":", 1)[0] if self.kind == "refused" else self.detail


def relative_error(expected: Any, got: Any) -> tuple[float, str]:
    """Max error relative to each output's largest magnitude, and how the outputs differ in form."""
    le, spec_e = tree_flatten(expected)
    lg, spec_g = tree_flatten(got)
    if spec_e != spec_g:
        return math.inf, f"output structure differs: {spec_e} vs {spec_g}"
    worst = 0.0
    for i, (a, b) in enumerate(zip(le, lg)):
        if a.shape != b.shape:
            return math.inf, f"output {i} has shape {tuple(b.shape)}, masked {tuple(a.shape)}"
        a, b = a.double(), b.double()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
                return math.inf, f"output {i}: non-finite values differ"
            keep = torch.isfinite(a)
            a, b = a[keep], b[keep]
        if a.numel():
            worst = max(worst, float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12))
    return worst, ""


@dataclass
class Case:
    program: Program
    settings: Settings
    input_seed: int = 0
    extras: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        p = self.program
        ops = ",\n        ".join(repr(op) for op in p.ops)
        return (f"Case(program=Program(inputs={p.inputs}, ops=[\n        {ops}],\n    outputs={p.outputs}, "
                f"output_form={p.output_form!r}, seed={p.seed}),\n    settings={self.settings!r})")


def run_case(case: Case, tolerance: float = 1e-4) -> Outcome:
    """Prune ``case`` and check: exact, refused (a GraphpruneError) or failure."""
    import graphprune
    from graphprune.errors import GraphpruneError, VerificationError

    model = case.program.build()
    example = case.program.example_inputs(case.input_seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    try:
        result = graphprune.prune(model, example, **case.settings.kwargs())
    except VerificationError as exc:
        return Outcome("failure", f"VerificationError: {first_line(exc)}", trace=traceback.format_exc())
    except GraphpruneError as exc:
        return Outcome("refused", f"{type(exc).__name__}: {first_line(exc)}")
    except Exception as exc:
        return Outcome("failure", f"{type(exc).__name__} from prune: {first_line(exc)}",
                       trace=traceback.format_exc())
    after = model.state_dict()
    if before.keys() != after.keys() or not all(torch.equal(before[k], after[k]) for k in before):
        return Outcome("failure", "prune changed the input model's state_dict")
    if model.training != training:
        return Outcome("failure", "prune changed the input model's training flag")
    fresh = case.program.example_inputs(case.input_seed + 7919)
    try:
        with torch.no_grad():  # each run gets its own copy: an in-place op may write its input
            expected = result.masked(*(x.clone() for x in fresh))
            got = result.compact(*(x.clone() for x in fresh))
            original = model(*(x.clone() for x in fresh))
    except Exception as exc:
        return Outcome("failure", f"{type(exc).__name__} running the result: {first_line(exc)}",
                       trace=traceback.format_exc())
    rel, why = relative_error(expected, got)
    if not why and rel > tolerance:
        rel = float64_error(result, fresh)  # an output that is float32 rounding (a norm of near-constants)
    if why or rel > tolerance:
        return Outcome("failure", why or f"compact != masked: max rel error {rel:.3g}", rel_error=rel)
    _, why = relative_error(original, expected)
    if why:
        return Outcome("failure", f"masked model vs the input model: {why}")
    params = sum(p.numel() for p in model.parameters())
    smaller = sum(p.numel() for p in result.compact.parameters()) < params
    return Outcome("exact", smaller=smaller, rel_error=rel)


def float64_error(result: Any, inputs: tuple) -> float:
    """compact vs masked relative error with both run in float64 (copies)."""
    import copy

    masked, compact = copy.deepcopy(result.masked).double(), copy.deepcopy(result.compact).double()
    with torch.no_grad():
        doubles = [x.double() if x.is_floating_point() else x for x in inputs]
        expected = masked(*(x.clone() for x in doubles))
        got = compact(*(x.clone() for x in doubles))
    return relative_error(expected, got)[0]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def random_case(seed: int, max_ops: int = 10, frontend: str = "auto") -> Case:
    """The case ``benchmarks/fuzz.py`` runs for ``seed``."""
    choose = RandomChooser(seed)
    program = generate(choose, max_ops)
    settings = draw_settings(choose, program.build())
    settings.frontend = frontend
    return Case(program, settings, input_seed=seed)
