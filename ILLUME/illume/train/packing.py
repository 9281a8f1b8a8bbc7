"""Packed rows: the real positions of a micro-batch's samples laid end to end in one row.

Packing happens after the model has placed every image's features in its sample (so each
sample's image tokens stay with it) and before the decoder runs. Position ids restart at 0 for
every sample; with `attention_mask=None` transformers reads the restarts as sample boundaries
(`masking_utils.find_packed_sequence_indices` for SDPA / eager / flex: a block-diagonal causal
mask; flash-attention: varlen kernels from the same position ids). Labels are shifted within
each sample before packing, so no sample predicts its neighbour's first token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from illume.vocab import IGNORE_INDEX

__all__ = ["Layout", "shift_labels"]


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[B, T] targets of each position (the next token's label); the last column is ignored."""
    return torch.cat([labels[:, 1:], labels.new_full((len(labels), 1), ignore_index)], dim=1)


@dataclass
class Layout:
    """Where the positions of a [B, T] batch went: `keep` marks real positions; packed or padded."""

    keep: torch.Tensor
    packed: bool

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None, shape: torch.Size, device: torch.device, packed: bool):
        keep = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones(shape[:2], dtype=torch.bool, device=device)
        )
        return cls(keep, packed)

    def pack(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, S, H] embeddings and [1, S] per-sample position ids of the real positions."""
        if position_ids is None:
            position_ids = self.keep.long().cumsum(1) - 1
        return inputs_embeds[self.keep][None], position_ids[self.keep][None]

    def flat_targets(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shifted labels and sample index per decoder output position, in the decoder's order."""
        shifted = shift_labels(labels)
        rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(labels)
        if self.packed:
            return shifted[self.keep], rows[self.keep]
        return shifted.reshape(-1), rows.reshape(-1)
