"""What the deploy target runs fast.

ONNX Runtime's CPU convolutions run in a blocked layout (NCHWc) when channel
counts are multiples of its block: 8 floats with AVX2, 16 with AVX-512. A
pruned conv whose counts are not falls back to a slower kernel, and can make
the pruned model slower than the dense one (``benchmarks/round_to.py``:
mobilenet_v3_large at half the FLOPs ran at 0.78x with round_to=1, 1.30x with
16). ``round_to="auto"`` rounds kept channel counts to this block.
"""

from __future__ import annotations

import functools


@functools.cache
def fast_channel_multiple() -> int:
    """The channel multiple ONNX Runtime's CPU kernels run fast on this machine."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    if "avx512f" in flags.split():
        return 16
    return 8  # AVX2 x86, and a safe multiple for ARM's NEON kernels


def resolve_round_to(round_to: int | str | None, for_onnx_runtime: bool) -> tuple[int, str | None]:
    """``round_to`` as a number, and a note where it was chosen for the runtime."""
    if round_to is None:
        round_to = "auto" if for_onnx_runtime else 1
    if round_to == "auto":
        multiple = fast_channel_multiple()
        return multiple, (f"round_to auto: kept channel counts are multiples of {multiple}, the block of ONNX "
                          "Runtime's fast convolutions on this CPU (round_to=1 keeps exact counts)")
    return round_to, None
