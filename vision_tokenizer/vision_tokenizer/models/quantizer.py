"""SimVQ: vector quantization against a linearly re-parameterised frozen random codebook.

The codebook actually used is `C = code_transform(frozen_codebook)`: the random buffer never
trains (it is saved in checkpoints and must be loaded, never re-drawn), only the square matrix W
does. Following the SimVQ paper (arXiv 2411.02038), this keeps every code reachable.

Index parity with the released tokenizer matters more than elegance here: codes are chosen with
`torch.cdist` + argmin exactly as the reference does, including its search in blocks of 32768 codes
for larger codebooks; only the rows are chunked so a large batch never materialises an [N, K]
distance matrix at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SimVQ", "nearest_code_indices"]

# The reference searches codebooks larger than this in blocks of this many codes and keeps the
# first block's code on exact ties; reproducing the blocking keeps indices bit-identical.
CODE_BLOCK = 32768
# Upper bound on distance-matrix elements computed at once (256 MiB in float32).
_MAX_DISTANCES_PER_CHUNK = 1 << 26


def nearest_code_indices(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the Euclidean-nearest code for each row of `vectors` [N, d] in `codebook` [K, d]."""
    num_codes = codebook.shape[0]
    blocks = codebook.split(CODE_BLOCK) if num_codes > CODE_BLOCK else (codebook,)
    rows_per_chunk = max(1, _MAX_DISTANCES_PER_CHUNK // min(num_codes, CODE_BLOCK))
    chunks = []
    for rows in vectors.split(rows_per_chunk):
        if len(blocks) == 1:
            chunks.append(torch.cdist(rows, codebook).argmin(dim=-1))
            continue
        best_dist, best_index = [], []
        for block_number, block in enumerate(blocks):
            dist, index = torch.cdist(rows, block).min(dim=-1)
            best_dist.append(dist)
            best_index.append(index + block_number * CODE_BLOCK)
        winner = torch.stack(best_dist, dim=-1).argmin(dim=-1, keepdim=True)
        chunks.append(torch.stack(best_index, dim=-1).gather(-1, winner).squeeze(-1))
    if not chunks:
        return torch.empty(0, dtype=torch.long, device=vectors.device)
    return torch.cat(chunks)


def _identity(tensor: torch.Tensor) -> tuple:
    """What must stay equal for a tensor's derived values to stay valid (inference tensors have no version)."""
    version = -1 if tensor.is_inference() else tensor._version
    return id(tensor), version, tensor.device, tensor.dtype


class SimVQ(nn.Module):
    """Quantizer with the official key layout: buffer `frozen_codebook` [K, d], `code_transform` (d -> d).

    `forward(z)` takes channel-first features [B, d, *spatial] (or [B, N, d] with
    `channel_first=False`) and returns `(quantized, commit_loss, indices)`; `quantized` carries
    straight-through gradients to `z`, `indices` has z's spatial shape.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        channel_first: bool = True,
        rotation_trick: bool = False,
        commitment_weight: float = 1.0,
        input_to_quantize_commit_loss_weight: float = 0.25,
    ) -> None:
        super().__init__()
        if rotation_trick:
            raise ValueError("SimVQ(rotation_trick=True) is not supported; the released DualViTok uses False")
        self.dim = dim
        self.codebook_size = codebook_size
        self.channel_first = channel_first
        self.commitment_weight = commitment_weight
        self.input_to_quantize_commit_loss_weight = input_to_quantize_commit_loss_weight
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim) * dim**-0.5)
        self.code_transform = nn.Linear(dim, dim, bias=False)
        self._cached_codebook: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    @property
    def codebook(self) -> torch.Tensor:
        """The implicit codebook C = frozen_codebook @ W^T, [K, d] float32; cached while nothing can change it.

        The cache is used only in eval mode without autograd and is keyed on the tensors' identity,
        version counters, device and dtype, so loading weights, an optimiser step or `.to()`
        invalidates it.
        """
        if self.training or torch.is_grad_enabled():
            self._cached_codebook = None
            return self._implicit_codebook()
        key = (_identity(self.code_transform.weight), _identity(self.frozen_codebook))
        if self._cached_codebook is None or self._cache_key != key:
            self._cached_codebook = self._implicit_codebook()
            self._cache_key = key
        return self._cached_codebook

    def _implicit_codebook(self) -> torch.Tensor:
        # float32 even for half-precision weights: code choice is the step most sensitive to rounding.
        return F.linear(self.frozen_codebook.float(), self.code_transform.weight.float())

    def _to_rows(self, z: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            return z.movedim(1, -1).reshape(-1, self.dim)
        return z.reshape(-1, self.dim)

    def _from_rows(self, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if self.channel_first:
            return rows.reshape(shape[0], *shape[2:], self.dim).movedim(-1, 1).contiguous()
        return rows.reshape(shape)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if z.shape[1 if self.channel_first else -1] != self.dim:
            raise ValueError(f"SimVQ(dim={self.dim}) got features of shape {tuple(z.shape)}")
        # Autocast would round the codebook to half precision and flip near-tie indices.
        with torch.autocast(z.device.type, enabled=False):
            codebook = self.codebook
            rows = self._to_rows(z)
            with torch.no_grad():
                indices = nearest_code_indices(rows.detach().to(codebook.dtype), codebook)
            codes = F.embedding(indices, codebook).to(rows.dtype)
            commit_loss = F.mse_loss(
                rows.detach(), codes
            ) + self.input_to_quantize_commit_loss_weight * F.mse_loss(rows, codes.detach())
            straight_through = rows + (codes - rows).detach()
        spatial = (z.shape[0], *z.shape[2:]) if self.channel_first else z.shape[:-1]
        quantized = self._from_rows(straight_through, z.shape)
        return quantized, commit_loss * self.commitment_weight, indices.reshape(spatial)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for `indices` [B, *spatial]: [B, d, *spatial] (channel-first) or [B, *spatial, d]."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"code indices must lie in [0, {self.codebook_size}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        codes = F.embedding(indices, self.codebook)
        # Contiguous NCHW: channels-last strides would send convolutions down other kernels.
        return codes.movedim(-1, 1).contiguous() if self.channel_first else codes
