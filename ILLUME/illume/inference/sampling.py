"""Sampling for ILLUME+ decoding: per-phase parameters, CFG in log-probability space, token draws.

Three phases have their own temperature / top-k / top-p: text, level 0 (semantic codes) and
level 1 (pixel codes). The official defaults derive the image phases from the text values
(`SamplingConfig.create`). Everything here works on a *slice* of the vocabulary (one level's id
range, or the text ids): softmax, CFG, top-k and top-p are all invariant to adding a constant per
row, so computing them on a slice gives the same distribution as on the full 283k-wide logits
with the other ids masked, at a fraction of the cost.

Random draws are counter-based: a row's noise for token id `t` at its `s`-th generated token is a
hash of (row key, s, t), and a token is drawn with the Gumbel-max trick. The row key comes from a
seeded `torch.Generator`. So a row's output depends only on its own seed and logits — not on what
else shares the batch, not on the device, and not on whether the step runs inside a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

__all__ = [
    "TEXT",
    "SEMANTIC",
    "PIXEL",
    "PHASE_NAMES",
    "SamplingParams",
    "SamplingConfig",
    "cfg_combine",
    "penalize_repeats",
    "row_keys",
    "step_keys",
    "gumbel_noise",
    "uniform_noise",
    "PhaseTable",
    "sample_tokens",
    "filtered_log_probs",
]

# Phase indices: what a row is sampling at a step.
TEXT, SEMANTIC, PIXEL = 0, 1, 2
PHASE_NAMES = ("text", "semantic", "pixel")


@dataclass(frozen=True)
class SamplingParams:
    """Temperature / top-k / top-p of one phase. `top_k <= 0` and `top_p >= 1` switch those filters off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (use do_sample=False for greedy), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class SamplingConfig:
    """How every phase is sampled, plus the LLM classifier-free-guidance scale.

    `official_double_sampling` reproduces what the official `generation_eval` / notebook really
    do: their own processor applies the phase's temperature/top-k/top-p, then transformers' warpers
    apply the *text* values again (effective temperature T_phase·T_text, top-k min(k_phase, k_text),
    top-p twice). Off by default: the intended behaviour is a single application.
    `repetition_penalty` (1.0: off) is transformers' penalty on the ids a row has generated, applied to
    the conditional logits before guidance, as HF `generate` applies a checkpoint's
    `generation_config.json` before the official custom processors.
    """

    text: SamplingParams = field(default_factory=lambda: SamplingParams(1.0, 50, 1.0))
    semantic: SamplingParams = field(default_factory=lambda: SamplingParams(1.0, 2048, 1.0))
    pixel: SamplingParams = field(default_factory=lambda: SamplingParams(1.0, 6144, 1.0))
    cfg_scale: float = 1.0
    do_sample: bool = True
    official_double_sampling: bool = False
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.cfg_scale > 0:
            raise ValueError(f"cfg_scale must be > 0, got {self.cfg_scale}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @classmethod
    def create(
        cls,
        temperature: float = 1.0,
        top_k: int = 2048,
        top_p: float = 1.0,
        *,
        cfg_scale: float = 1.0,
        semantic_temperature: float | None = None,
        semantic_top_k: int | None = None,
        semantic_top_p: float | None = None,
        pixel_temperature: float | None = None,
        pixel_top_k: int | None = None,
        pixel_top_p: float | None = None,
        do_sample: bool = True,
        official_double_sampling: bool = False,
        repetition_penalty: float = 1.0,
    ) -> SamplingConfig:
        """Fill unset image values like the official `InferenceConfig`.

        Semantic values default to the text values; pixel temperature/top-p to the semantic ones
        and pixel top-k to 3 × the semantic top-k (the pixel codebook is 3× larger).
        """
        text = SamplingParams(temperature, top_k, top_p)
        semantic = SamplingParams(
            temperature if semantic_temperature is None else semantic_temperature,
            top_k if semantic_top_k is None else semantic_top_k,
            top_p if semantic_top_p is None else semantic_top_p,
        )
        pixel = SamplingParams(
            semantic.temperature if pixel_temperature is None else pixel_temperature,
            3 * semantic.top_k if pixel_top_k is None else pixel_top_k,
            semantic.top_p if pixel_top_p is None else pixel_top_p,
        )
        return cls(text, semantic, pixel, cfg_scale, do_sample, official_double_sampling, repetition_penalty)

    def phase(self, phase: int) -> SamplingParams:
        return (self.text, self.semantic, self.pixel)[phase]

    def with_cfg(self, cfg_scale: float) -> SamplingConfig:
        return replace(self, cfg_scale=cfg_scale)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0


def penalize_repeats(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' `RepetitionPenaltyLogitsProcessor` on a slice: ids already generated (`seen`,
    same shape) have positive scores divided by `penalty` and negative ones multiplied by it."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def cfg_combine(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in log-probability space: `g·(log p_c − log p_u) + log p_u`.

    Inputs (rows, ids) of the same id range; float32 out. Rows of log-probabilities computed over
    a slice differ from full-vocabulary ones by a per-row constant, which cancels in sampling.
    """
    cond = torch.log_softmax(cond_logits.float(), dim=-1)
    uncond = torch.log_softmax(uncond_logits.float(), dim=-1)
    return scale * (cond - uncond) + uncond


# ---------------------------------------------------------------------------------------------
# Counter-based noise. 32-bit mixing ("lowbias32"-style) on int64 tensors, values kept < 2**32.
_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def row_keys(generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One 32-bit key per row, drawn from that row's seeded generator (int64, CPU)."""
    draws = [int(torch.randint(0, 2**32, (1,), generator=g, dtype=torch.int64)) for g in generators]
    return torch.tensor(draws, dtype=torch.int64)


def step_keys(keys: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Per-row keys of the `step`-th generated token (same device as `keys`); `step` is one int
    for every row or a tensor broadcasting against `keys` (e.g. each row's own position)."""
    if isinstance(step, torch.Tensor):
        return _mix32(keys ^ _mix32((step.to(keys.device, torch.int64) * _GOLDEN32) & _MASK32))
    return _mix32(keys ^ _mix32(torch.full_like(keys, (step * _GOLDEN32) & _MASK32)))


def uniform_noise(keys: torch.Tensor) -> torch.Tensor:
    """One uniform draw in (0, 1) per key (float32), independent of the Gumbel noise of the key."""
    bits = _mix32(keys ^ 0x5BD1E995)
    return ((bits >> 9).float() + 0.5) * (2.0**-23)


def gumbel_noise(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise for every (row, token id): `keys` (rows,), `token_ids` (rows, n) → float32."""
    bits = _mix32(keys[:, None] ^ _mix32(token_ids + 1))
    # 23 random bits → uniform in (0, 1), exactly representable in float32 (no 0, no 1).
    uniform = ((bits >> 9).float() + 0.5) * (2.0**-23)
    return -torch.log(-torch.log(uniform))


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseTable:
    """Per-row filter values for one step: stages of (temperature, top_k, top_p) applied in order.

    Tensors are (rows,) on the logits' device. `top_k` 0 = off, `top_p` 1 = off. `k_cap` (host int)
    is the largest top-k in use, or 0 when some row needs the full sorted range.
    """

    temperature: tuple[torch.Tensor, ...]
    top_k: tuple[torch.Tensor, ...]
    top_p: tuple[torch.Tensor, ...]
    k_cap: int
    needs_sort: bool

    @classmethod
    def build(
        cls, stages: Sequence[Sequence[SamplingParams]], device: torch.device | str, width: int | None = None
    ) -> PhaseTable:
        """`stages[j][r]`: the params of stage j for row r (one stage, or two for double sampling).

        With the slice `width`, a top-k of at least `width` is off: it cannot drop anything, so
        the sort is skipped when no other filter needs it.
        """

        def k_of(p: SamplingParams) -> int:
            return 0 if p.top_k <= 0 or (width is not None and p.top_k >= width) else p.top_k

        temps, ks, ps = [], [], []
        for stage in stages:
            temps.append(torch.tensor([p.temperature for p in stage], dtype=torch.float32, device=device))
            ks.append(torch.tensor([k_of(p) for p in stage], dtype=torch.int64, device=device))
            ps.append(torch.tensor([p.top_p for p in stage], dtype=torch.float32, device=device))
        first = stages[0]
        k_cap = 0 if any(k_of(p) == 0 for p in first) else max(k_of(p) for p in first)
        needs_sort = any(k_of(p) > 0 or p.top_p < 1 for stage in stages for p in stage)
        return cls(tuple(temps), tuple(ks), tuple(ps), k_cap, needs_sort)


def _nucleus(values: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest prefix (values sorted descending) whose probability mass reaches top_p."""
    probs = torch.softmax(values, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1)
    drop[:, 0] = False
    return values.masked_fill(drop, -math.inf)


def sample_tokens(
    scores: torch.Tensor,
    table: PhaseTable,
    keys: torch.Tensor,
    *,
    id_offset: int = 0,
    greedy: bool = False,
) -> torch.Tensor:
    """Draw one id per row from `scores` (rows, n) covering ids [id_offset, id_offset + n).

    Disallowed ids must already be −inf. Temperature, top-k and top-p of each stage in `table`
    run in order; the draw is Gumbel-max with `keys` (rows,) from `step_keys`. Returns absolute
    ids (rows,), int64.
    """
    scores = scores.float()
    if greedy:
        return scores.argmax(dim=-1) + id_offset
    values, index = _filtered(scores, table)
    noisy = values + gumbel_noise(keys, index + id_offset)
    choice = noisy.argmax(dim=-1, keepdim=True)
    return index.gather(-1, choice).squeeze(-1) + id_offset


def _filtered(scores: torch.Tensor, table: PhaseTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered scores (−inf where dropped) and the slice index of each value: sorted top values
    when a filter needs the order, else the scores themselves."""
    n = scores.shape[-1]
    if table.needs_sort:
        cap = table.k_cap if 0 < table.k_cap < n else n
        values, index = torch.topk(scores, cap, dim=-1, sorted=True)
        rank = torch.arange(cap, device=scores.device)
        for temperature, top_k, top_p in zip(table.temperature, table.top_k, table.top_p):
            values = values / temperature[:, None]
            values = values.masked_fill((top_k[:, None] > 0) & (rank[None, :] >= top_k[:, None]), -math.inf)
            values = _nucleus(values, top_p)
    else:
        index = torch.arange(n, device=scores.device).expand_as(scores)
        values = scores
        for temperature in table.temperature:
            values = values / temperature[:, None]
    return values, index


def filtered_log_probs(scores: torch.Tensor, table: PhaseTable) -> torch.Tensor:
    """The distribution `sample_tokens` draws from, as log-probabilities (rows, n) over the slice
    (−inf where filtered out): Gumbel-max over the filtered values samples exactly this."""
    values, index = _filtered(scores.float(), table)
    full = torch.full_like(scores, -math.inf, dtype=torch.float32)
    return torch.log_softmax(full.scatter(-1, index, values), dim=-1)
