"""A static-KV-cache decoder over the weights of a (ILLUME) Qwen2 causal LM.

Decoding one token per row for ~1,400 steps is dominated by per-step overhead, so the decode step
is written for CUDA-graph capture (the gpt-fast recipe): key/value buffers are preallocated for
the whole generation, every step writes its keys at one shared cache slot, reads a static-shape
boolean attention mask, and takes its inputs from fixed buffers. The same code runs eagerly on
CPU. Only the attention is re-implemented; norms, MLPs, rotary embeddings and the projections are
the model's own modules, so numerics follow transformers' Qwen2.

The LM head is applied to the final hidden state of the last position only, and only to the id
range the caller asks for (`span`): a level's code ids, or the text ids. On ILLUME+ 3B that is
98k or 33k rows of the 283k-row head.

Grouped-query attention is computed by folding each key/value head's query group into the query
length, so plain SDPA kernels (with a mask) apply without repeating keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

__all__ = ["DecoderState", "StaticDecoder"]

Span = tuple[int, int]


@dataclass
class DecoderState:
    """Inputs of the next decode step, kept in fixed buffers (CUDA graphs replay on their addresses).

    `tokens` (rows,), `positions` (rows,), `slot` (1,) cache index written by the step,
    `mask` (rows, max_len) which cache slots each row may attend to.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    slot: torch.Tensor
    mask: torch.Tensor


class StaticDecoder:
    """Prefill + one-token decode steps with a preallocated cache for `rows` sequences.

    Build with the causal LM (an `IllumeQwen2ForCausalLM` or any transformers Qwen2-style
    model: `model.model.layers[i].self_attn.{q,k,v,o}_proj`, norms, `rotary_emb`, `lm_head`).
    `use_cuda_graphs` captures one graph per head span on first use (CUDA only).
    """

    def __init__(self, model: nn.Module, rows: int, max_len: int, use_cuda_graphs: bool = False) -> None:
        body = model.model
        config = model.config
        if getattr(config, "use_sliding_window", False):
            raise ValueError(
                "StaticDecoder does not implement sliding-window attention (config.use_sliding_window)"
            )
        self.body = body
        self.head_weight = model.get_output_embeddings().weight
        self.embed = body.get_input_embeddings()
        attn0 = body.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.rows = rows
        self.max_len = max_len
        weight = self.embed.weight
        self.device = weight.device
        self.dtype = weight.dtype
        shape = (rows, self.num_kv_heads, max_len, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in body.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in body.layers]
        self.state = DecoderState(
            tokens=torch.zeros(rows, dtype=torch.long, device=self.device),
            positions=torch.zeros(rows, dtype=torch.long, device=self.device),
            slot=torch.zeros(1, dtype=torch.long, device=self.device),
            mask=torch.zeros(rows, max_len, dtype=torch.bool, device=self.device),
        )
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[Span | None, tuple[torch.cuda.CUDAGraph, torch.Tensor | None]] = {}
        self._pool = None

    # ------------------------------------------------------------------ transformer pieces
    def _attention(
        self,
        layer: nn.Module,
        index: int,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        write_slots: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Self-attention of `hidden` (rows, T, H) writing its keys at `write_slots` (T,).

        `mask` (rows, T, S) bool: which of the first S cache slots each query may see.
        """
        attn = layer.self_attn
        rows, length, _ = hidden.shape
        q = attn.q_proj(hidden).view(rows, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(hidden).view(rows, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(hidden).view(rows, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        self.keys[index].index_copy_(2, write_slots, k)
        self.values[index].index_copy_(2, write_slots, v)
        seen = mask.shape[-1]
        keys, values = self.keys[index][:, :, :seen], self.values[index][:, :, :seen]
        group = self.num_heads // self.num_kv_heads
        if length == 1:
            # Decode: fold each key/value head's query group into the query axis, (rows, kv, group, d);
            # query head h = kv·group + g uses key/value head kv.
            q = q.reshape(rows, self.num_kv_heads, group, self.head_dim)
            full_mask = mask[:, None].expand(rows, 1, group, seen)
        else:
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
            full_mask = mask[:, None]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=full_mask, scale=attn.scaling)
        out = out.reshape(rows, self.num_heads, length, self.head_dim).transpose(1, 2)
        return attn.o_proj(out.reshape(rows, length, self.num_heads * self.head_dim))

    def _forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, write_slots: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Hidden state (rows, H) after the final norm at the last input position."""
        cos, sin = self.body.rotary_emb(embeds, positions)
        hidden = embeds
        for index, layer in enumerate(self.body.layers):
            residual = hidden
            hidden = residual + self._attention(
                layer, index, layer.input_layernorm(hidden), cos, sin, write_slots, mask
            )
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.body.norm(hidden[:, -1])

    def _head(self, hidden: torch.Tensor, span: Span) -> torch.Tensor:
        return F.linear(hidden, self.head_weight[span[0] : span[1]]).float()

    # ------------------------------------------------------------------ public steps
    @torch.no_grad()
    def prefill(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, span: Span | None
    ) -> torch.Tensor | None:
        """Run left-padded prompts `embeds` (rows, L, H) with `attention_mask` (rows, L) into slots 0..L-1.

        Sets the decode state (positions continue after each row's real tokens) and returns the
        logits (rows, span width) of the next token, or None when `span` is None.
        """
        rows, length, _ = embeds.shape
        if rows != self.rows or length > self.max_len:
            raise ValueError(
                f"prefill of {rows}x{length} does not fit the cache ({self.rows}x{self.max_len})"
            )
        real = attention_mask.to(device=self.device, dtype=torch.bool)
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        # A query sees real earlier tokens, and always itself (keeps padding rows finite).
        itself = torch.eye(length, dtype=torch.bool, device=self.device)
        mask = (causal[None] & real[:, None, :]) | itself[None]
        hidden = self._forward(
            embeds.to(self.dtype), positions, torch.arange(length, device=self.device), mask
        )
        state = self.state
        state.mask.zero_()
        state.mask[:, :length] = real
        state.positions.copy_(real.sum(-1))
        state.slot.fill_(length)
        return None if span is None else self._head(hidden, span)

    def _step_body(self, span: Span | None) -> torch.Tensor | None:
        state = self.state
        embeds = self.embed(state.tokens)[:, None]
        hidden = self._forward(embeds, state.positions[:, None], state.slot, state.mask[:, None])
        return None if span is None else self._head(hidden, span)

    @torch.no_grad()
    def step(self, span: Span | None) -> torch.Tensor | None:
        """Feed `state.tokens` at `state.slot`; logits (rows, span width) of the next token, or None.

        The caller fills `state` first (tokens, positions, slot, and the mask column of the slot).
        """
        if not self.use_cuda_graphs:
            return self._step_body(span)
        if span not in self._graphs:
            self._graphs[span] = self._capture(span)
        graph, out = self._graphs[span]
        graph.replay()
        return out

    def _capture(self, span: Span | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None]:
        """Warm up on a side stream, then capture one step. Re-running the step is harmless: it
        rewrites the same cache slot with the same keys."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step_body(span)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._step_body(span)
        return graph, out
