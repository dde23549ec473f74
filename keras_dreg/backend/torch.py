"""`vjp` on PyTorch: `torch.autograd.grad(..., create_graph=True)`.

Inputs are detached leaves that require grad; a tapped tensor `t`
becomes `t + delta` with `delta` a zero leaf, so frozen layers can be
tapped too.

`fn` runs with torch's math kernel of scaled dot-product attention
(`SDPBackend.MATH`, plain differentiable ops): the fused kernels that
torch picks otherwise (flash and memory-efficient attention, on CPU and
GPU) have no second derivative, so `MultiHeadAttention` could not be
differentiated twice.
"""

import torch
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel


def vjp(fn, xs):
    xs = [x.detach().requires_grad_(True) for x in xs]
    deltas = []

    def tap(t):
        delta = torch.zeros_like(t, requires_grad=True)
        deltas.append(delta)
        return t + delta

    with sdpa_kernel(SDPBackend.MATH):
        outputs = fn(xs, tap)
    sources = [*xs, *deltas]

    def gradients(cotangents):
        grads = torch.autograd.grad(
            outputs,
            sources,
            grad_outputs=list(cotangents),
            create_graph=True,
            retain_graph=True,
            allow_unused=True,
        )
        return [
            torch.zeros_like(s) if g is None else g
            for g, s in zip(grads, sources)
        ]

    return outputs, gradients


def gpu_available():
    return torch.cuda.is_available()
