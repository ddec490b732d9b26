"""Compile every kernel of the Triton step for a GPU, without one: ``python -m
hmrnn.model.loop.backends.triton.compile_check [ARCH]`` (default 90, an H100).

Triton's interpreter (how ``tests/test_triton.py`` runs the kernels without a GPU) checks
what they compute, not that they compile: this lowers each kernel, with every optional
field present and with none, through Triton's compiler to PTX and a cubin (ptxas comes
with triton), for CUDA compute capability ``ARCH``. No GPU or driver is needed. Run it
without ``TRITON_INTERPRET=1`` (the kernels must be compiled-mode ones).
"""

from __future__ import annotations

import sys
import time

import torch
from torch import Tensor


def launches(H: int = 6, N: int = 3, steps: int = 2) -> list:
    """One bound launch of each kernel with every optional field present, and one with
    the optional fields absent, on ``(steps, N, *)`` float32 CPU fields (never run)."""
    from hmrnn.model.loop.backends import Term, TermGrad
    from hmrnn.model.loop.backends import triton as tb

    R = 4 * H + 1

    def m(width: int) -> Tensor:
        return torch.zeros(steps, N, width)

    def v(width: int) -> Tensor:
        return torch.zeros(width)

    term, grad = Term(m(R), m(2), v(R), v(R)), TermGrad(m(R), m(2), m(R), v(R), v(R))
    out = [
        tb.hm_forward(N, H, True, "soft", m(R), m(H), m(H), m(1), m(1), m(H), m(H), m(1),
                      m(H), m(1), m(1), m(2 * H), m(1), m(2), v(H), v(H), 1.0, 1e-5),
        tb.hm_forward(N, H, False, "step", m(4 * H), m(H), m(H), m(1), None, m(H), m(H),
                      None, m(H), None, None, None, None, None, None, None, 1.0, 1e-5),
        tb.hm_gather(N, H, H + 1, H + 2, m(3 * H + 3), m(H), m(H + 1), m(1), m(H + 2), m(1)),
        tb.hm_gather(N, H, 0, H + 2, m(2 * H + 2), m(H), None, m(1), m(H + 2), m(1)),
        tb.hm_terms_forward(N, R, m(R), v(R), m(1), m(1), term, term, term, 1e-5),
        tb.hm_terms_forward(N, R, m(R), m(R), m(1), None, term, None, None, 1e-5),
        tb.hm_backward(N, H, True, m(R), m(H), m(H), m(H), m(1), m(2 * H), m(1), m(1), m(1),
                       m(2), v(H), m(H)[0], m(H), m(H)[0], m(1)[0], m(1), m(1)[0], m(R),
                       m(H), m(2 * H)[0], 0.5),
        tb.hm_backward(N, H, False, m(4 * H), m(H), m(H), m(H), None, None, None, m(1), None,
                       None, None, m(H)[0], None, m(H)[0], m(1)[0], None, None, m(4 * H),
                       m(H), m(2 * H)[0], 0.5),
        tb.hm_spread(N, H, H + 1, H + 2, m(3 * H + 3)[0], m(H)[0], m(H + 1), m(1),
                     m(H + 1)[0], m(1)[0], m(H + 2), m(1), m(H + 2)[0], m(1)[0]),
        tb.hm_spread(N, H, H + 1, 0, m(2 * H + 1)[0], m(H)[0], m(H + 1), m(1), m(H + 1)[0],
                     m(1)[0], None, None, None, None),
        tb.hm_terms_backward(N, R, m(R), m(1), m(1), m(1)[0], m(1)[0], grad, grad, grad),
        tb.hm_terms_backward(N, R, m(R), m(1), None, m(1)[0], None, grad, None, None),
    ]
    return out


def _signature(launch: object) -> tuple[dict[str, str], dict[str, object]]:
    """Triton's signature and constexprs of a bound launch (``t`` first, an i32)."""
    kernel, args, meta = launch.kernel, launch.args, launch.meta  # type: ignore[attr-defined]
    signature: dict[str, str] = {}
    constants: dict[str, object] = {}
    for name, value in zip(kernel.arg_names, [0, *args], strict=False):
        if isinstance(value, Tensor):
            signature[name] = "*fp32"
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"
    for name in kernel.arg_names[len(args) + 1 :]:
        signature[name], constants[name] = "constexpr", meta[name]
    return signature, constants


def compile_all(arch: int = 90) -> list[str]:
    """Compile each of :func:`launches` for CUDA compute capability ``arch``; one line
    each (raises on the first that does not compile)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from hmrnn.model.loop.backends import triton as tb

    if tb.INTERPRET:
        raise RuntimeError("compile_check needs compiled-mode kernels: unset TRITON_INTERPRET")
    target = GPUTarget("cuda", arch, 32)
    lines = []
    for launch in launches():
        signature, constants = _signature(launch)
        start = time.perf_counter()
        kernel = triton.compile(ASTSource(launch.kernel, signature, constants), target=target,
                                options={"num_warps": launch.meta["num_warps"]})
        flags = ",".join(k for k, v in constants.items() if v is True) or "-"
        lines.append(f"{launch.name:18s} sm_{arch} {flags:32s} cubin {len(kernel.asm['cubin'])} "
                     f"bytes, {time.perf_counter() - start:.1f} s")
    return lines


if __name__ == "__main__":
    for line in compile_all(int(sys.argv[1]) if len(sys.argv) > 1 else 90):
        print(line)
