"""Cross-entropy of the LM head without materialising `[positions, vocab]` logits.

ILLUME+ has a 283,047-row output layer: at a few thousand supervised positions the plain
`lm_head` + cross-entropy holds the bf16 logits, their fp32 upcast and both gradients, the largest
tensors of a training step. :func:`linear_cross_entropy` computes the same loss in chunks of
positions: per chunk the logits are formed, reduced to a log-sum-exp, and turned straight into
the gradients wrt the hidden states and the head weight (summed over chunks), so the peak extra
memory is one `[chunk, vocab]` block. Gradients are computed in the forward pass (as
liger-kernel does): the backward only scales them, so the head is multiplied once, not twice.

On CUDA with liger-kernel installed, `backend="auto"` uses its fused Triton kernel instead.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from illume.vocab import IGNORE_INDEX

__all__ = ["BACKENDS", "TokenLosses", "linear_cross_entropy", "liger_available", "resolve_backend"]

BACKENDS = ("auto", "chunked", "liger", "plain")
DEFAULT_CHUNK = 2048


@dataclass
class TokenLosses:
    """`total`: summed loss over supervised positions (differentiable); `per_position`: detached, 0 where ignored."""

    total: torch.Tensor
    per_position: torch.Tensor | None
    count: int


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size: int, ignore_index: int, want_grads: bool):
        needs = [want_grads and need for need in ctx.needs_input_grad]
        per_position = torch.zeros(len(hidden), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if needs[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and needs[2] else None
        for start in range(0, len(hidden), chunk_size):
            rows = slice(start, start + chunk_size)
            target = labels[rows]
            valid = target != ignore_index
            if not bool(valid.any()):
                continue
            h = hidden[rows]
            logits = (h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)).float()
            lse = torch.logsumexp(logits, dim=-1)
            safe = torch.where(valid, target, 0)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            per_position[rows] = torch.where(valid, lse - picked, 0.0)
            if not any(needs[:3]):
                continue
            # d loss / d logits = softmax - one_hot(target), zero on ignored rows.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(len(safe), device=safe.device), safe] -= 1.0
            grad_logits.mul_(valid[:, None])
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h.float())
            if grad_bias is not None:
                grad_bias.add_(grad_logits.sum(0))
        ctx.save_for_backward(
            grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
        )  # fmt: skip
        total = per_position.sum()
        ctx.mark_non_differentiable(per_position)
        return total, per_position

    @staticmethod
    def backward(ctx, grad_total, _grad_per_position):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_total

        def scaled(grad):
            return None if grad is None else grad * scale.to(grad.dtype)

        return scaled(grad_hidden), scaled(grad_weight), scaled(grad_bias), None, None, None, None


def _plain(hidden, weight, bias, labels, ignore_index) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    per_position = torch.nn.functional.cross_entropy(
        logits, labels, ignore_index=ignore_index, reduction="none"
    )
    return per_position.sum(), per_position.detach()


def _liger(hidden, weight, bias, labels, ignore_index) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # optional, CUDA only

    out = LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, reduction="sum")(weight, hidden, labels, bias)
    return out[0] if isinstance(out, tuple) else out  # some versions return (loss, z_loss)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"cross-entropy backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "liger" if device.type == "cuda" and liger_available() else "chunked"
    if backend == "liger" and not liger_available():
        raise ValueError("cross-entropy backend 'liger' needs liger-kernel: pip install -e '.[flash]'")
    return backend


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK,
    ignore_index: int = IGNORE_INDEX,
) -> TokenLosses:
    """Loss of `hidden @ weight.T (+ bias)` against `labels` (already shifted), summed over positions.

    `hidden` [N, H], `labels` [N]; rows equal to `ignore_index` add nothing. Logits are upcast to
    fp32 before the softmax, as transformers' causal-LM loss does. `per_position` is None with
    liger (its kernel returns only the reduced loss).
    """
    if hidden.ndim != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden [N, H] and labels [N] expected, got {tuple(hidden.shape)}, {tuple(labels.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    count = int((labels != ignore_index).sum())
    chosen = resolve_backend(backend, hidden.device)
    if chosen == "liger":
        return TokenLosses(_liger(hidden, weight, bias, labels, ignore_index), None, count)
    if chosen == "plain":
        total, per_position = _plain(hidden, weight, bias, labels, ignore_index)
    else:
        # Inside autograd.Function.forward grad mode is off, so the caller's mode is passed in.
        want_grads = torch.is_grad_enabled()
        total, per_position = _ChunkedLinearCrossEntropy.apply(
            hidden, weight, bias, labels, chunk_size, ignore_index, want_grads
        )
    return TokenLosses(total, per_position, count)
