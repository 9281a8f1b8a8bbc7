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
length, so plain SDPA kernels (with a mask) apply without repeating keys. Decode steps read only
the filled part of the cache, rounded up to a `LENGTH_BUCKET` (one graph per bucket), so early
steps of a long generation do not pay for the whole preallocated length.

`window` feeds several tokens per row at per-row cache columns in one forward (speculative Jacobi
verification, and forced structure tokens fed together with the next sampled one).

The q/k/v and gate/up projections are fused into one GEMM each (`fuse_projections`, once per
model): the fused weight is built from the checkpoint's separate ones and the separate modules
are re-pointed at slices of it, so no memory is duplicated and state-dict keys are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

__all__ = ["DecoderState", "StaticDecoder", "FusedLayer", "fuse_projections", "LENGTH_BUCKET", "bucketed"]

Span = tuple[int, int]
LENGTH_BUCKET = 256


@dataclass(frozen=True)
class FusedLayer:
    """One layer's fused projections: `qkv` (q+k+v rows, H) with its bias, `gate_up` (2·I, H)."""

    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    gate_up: torch.Tensor


def _plain(weight: torch.Tensor) -> bool:
    """Fusable: an ordinary dense tensor (not a quantized tensor subclass)."""
    return type(weight) in (torch.Tensor, nn.Parameter) and not weight.is_quantized


def _fuse(modules: list[nn.Linear], name: str) -> torch.Tensor | None:
    """Concatenate one parameter of `modules` and re-point each module at its slice."""
    parts = [getattr(m, name) for m in modules]
    if any(p is None for p in parts):
        return None
    fused = torch.cat([p.detach() for p in parts])
    start = 0
    for module, part in zip(modules, parts):
        stop = start + part.shape[0]
        setattr(module, name, nn.Parameter(fused[start:stop], requires_grad=part.requires_grad))
        start = stop
    return fused


def fuse_projections(model: nn.Module) -> list[FusedLayer] | None:
    """Fused q/k/v and gate/up weights of every layer, built once per model (None when the
    weights are quantized or otherwise not plain tensors: the modules' own forwards are used)."""
    cached = getattr(model, "_illume_fused_layers", None)
    if cached is not None:
        return cached
    layers = model.model.layers
    weights = [
        m.weight
        for layer in layers
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj)
    ]
    if not all(_plain(w) for w in weights):
        return None
    fused = []
    with torch.no_grad():
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            fused.append(
                FusedLayer(_fuse(qkv, "weight"), _fuse(qkv, "bias"), _fuse([mlp.gate_proj, mlp.up_proj], "weight"))
            )
    model._illume_fused_layers = fused
    return fused


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


@dataclass
class WindowInputs:
    """Fixed buffers of one multi-token step of `width` tokens per row: `tokens`, `positions` and
    cache `columns` (rows, width); `mask` (rows, width, seen) is what each query may attend to."""

    tokens: torch.Tensor
    positions: torch.Tensor
    columns: torch.Tensor
    mask: torch.Tensor


def bucketed(length: int) -> int:
    """`length` rounded up to a whole number of `LENGTH_BUCKET`s."""
    return -(-length // LENGTH_BUCKET) * LENGTH_BUCKET


def _bucket(filled: int, max_len: int) -> int:
    return min(max_len, bucketed(filled))


class StaticDecoder:
    """Prefill + decode steps with a preallocated cache for `rows` sequences.

    Build with the causal LM (an `IllumeQwen2ForCausalLM` or any transformers Qwen2-style
    model: `model.model.layers[i].self_attn.{q,k,v,o}_proj`, norms, `rotary_emb`, `lm_head`).
    `use_cuda_graphs` captures one graph per (head span, cache bucket[, window width]) on first
    use (CUDA only); `captures` counts them.
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
        self.fused = fuse_projections(model)
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
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor | None]] = {}
        self._windows: dict[int, WindowInputs] = {}
        self._pool = None
        self.captures = 0

    # ------------------------------------------------------------------ transformer pieces
    def _projections(self, index: int, layer: nn.Module, hidden: torch.Tensor):
        attn = layer.self_attn
        if self.fused is None:
            return attn.q_proj(hidden), attn.k_proj(hidden), attn.v_proj(hidden)
        fused = self.fused[index]
        q_width = self.num_heads * self.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        out = F.linear(hidden, fused.qkv_weight, fused.qkv_bias)
        return out.split((q_width, kv_width, kv_width), dim=-1)

    def _mlp(self, index: int, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        mlp = layer.mlp
        if self.fused is None:
            return mlp(hidden)
        gate, up = F.linear(hidden, self.fused[index].gate_up).chunk(2, dim=-1)
        return mlp.down_proj(mlp.act_fn(gate) * up)

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
        """Self-attention of `hidden` (rows, T, H) writing its keys at `write_slots` (T,) shared by
        every row, or (rows, T) per row. `mask` (rows, T, S) bool: which of the first S cache slots
        each query may see."""
        attn = layer.self_attn
        rows, length, _ = hidden.shape
        q, k, v = self._projections(index, layer, hidden)
        q = q.reshape(rows, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(rows, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(rows, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if write_slots.dim() == 1:
            self.keys[index].index_copy_(2, write_slots, k)
            self.values[index].index_copy_(2, write_slots, v)
        else:
            where = write_slots[:, None, :, None].expand_as(k)
            self.keys[index].scatter_(2, where, k)
            self.values[index].scatter_(2, where, v)
        seen = mask.shape[-1]
        keys, values = self.keys[index][:, :, :seen], self.values[index][:, :, :seen]
        group = self.num_heads // self.num_kv_heads
        if length <= 64:
            # Decode: fold each key/value head's query group into the query axis,
            # (rows, kv, group·T, d); query head h = kv·group + g uses key/value head kv.
            q = q.reshape(rows, self.num_kv_heads, group * length, self.head_dim)
            full_mask = mask[:, None, None].expand(rows, 1, group, length, seen).reshape(rows, 1, group * length, seen)
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
        """Hidden states (rows, T, H) before the final norm."""
        cos, sin = self.body.rotary_emb(embeds, positions)
        hidden = embeds
        for index, layer in enumerate(self.body.layers):
            residual = hidden
            hidden = residual + self._attention(
                layer, index, layer.input_layernorm(hidden), cos, sin, write_slots, mask
            )
            hidden = hidden + self._mlp(index, layer, layer.post_attention_layernorm(hidden))
        return hidden

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
        return None if span is None else self._head(self.body.norm(hidden[:, -1]), span)

    def _step_body(self, span: Span | None, seen: int) -> torch.Tensor | None:
        state = self.state
        embeds = self.embed(state.tokens)[:, None]
        hidden = self._forward(embeds, state.positions[:, None], state.slot, state.mask[:, None, :seen])
        return None if span is None else self._head(self.body.norm(hidden[:, -1]), span)

    @torch.no_grad()
    def step(self, span: Span | None, filled: int | None = None) -> torch.Tensor | None:
        """Feed `state.tokens` at `state.slot`; logits (rows, span width) of the next token, or None.

        The caller fills `state` first (tokens, positions, slot, and the mask column of the slot).
        `filled` (host int, > the slot) bounds the cache columns attention reads; default: all.
        """
        seen = self.max_len if filled is None else _bucket(filled, self.max_len)
        if not self.use_cuda_graphs:
            return self._step_body(span, seen)
        return self._replay(("step", span, seen), lambda: self._step_body(span, seen))

    def window_inputs(self, width: int) -> WindowInputs:
        """The fixed input buffers of `width`-token steps (fill them, then call `window`)."""
        if width not in self._windows:
            shape = (self.rows, width)
            self._windows[width] = WindowInputs(
                tokens=torch.zeros(shape, dtype=torch.long, device=self.device),
                positions=torch.zeros(shape, dtype=torch.long, device=self.device),
                columns=torch.zeros(shape, dtype=torch.long, device=self.device),
                mask=torch.zeros(*shape, self.max_len, dtype=torch.bool, device=self.device),
            )
        return self._windows[width]

    def _window_body(self, width: int, span: Span, seen: int) -> torch.Tensor:
        inputs = self._windows[width]
        embeds = self.embed(inputs.tokens)
        hidden = self._forward(embeds, inputs.positions, inputs.columns, inputs.mask[:, :, :seen])
        return self._head(self.body.norm(hidden), span)

    @torch.no_grad()
    def window(self, width: int, span: Span, filled: int) -> torch.Tensor:
        """Feed the `window_inputs(width)` buffers; logits (rows, width, span width) after each token.

        Every row writes its keys at its own `columns`; `filled` (host int) is one past the largest
        column any query may see.
        """
        seen = _bucket(filled, self.max_len)
        if not self.use_cuda_graphs:
            return self._window_body(width, span, seen)
        return self._replay(("window", width, span, seen), lambda: self._window_body(width, span, seen))

    def _replay(self, key: tuple, body) -> torch.Tensor | None:
        if key not in self._graphs:
            self._graphs[key] = self._capture(body)
        graph, out = self._graphs[key]
        graph.replay()
        return out

    def _capture(self, body) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None]:
        """Warm up on a side stream, then capture one step. Re-running the step is harmless: it
        rewrites the same cache slots with the same keys."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                body()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = body()
        self.captures += 1
        return graph, out
