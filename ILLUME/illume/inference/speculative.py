"""Image rows decoded in multi-token windows, optionally with speculative Jacobi decoding (SJD).

Every row of a text-to-image or editing batch follows its grid's `ImageSchedule`, so the tokens
after the last committed one are either forced (structure markers) or codes of a known level.
One forward feeds each row a window `[last committed, guess_1, …, guess_{T-1}]` at the row's own
cache columns and returns the next-token logits after every window position. A guess is
*verified* when the model, given everything before it, would have produced it:

* forced positions are always right, so structure tokens cost no forward of their own
  (`draft=False`: the window is the last token plus the forced run after it);
* with `draft=True` (SJD, Teng et al. 2024) code positions carry drafts sampled from the
  distribution the previous forward gave them (a stale context: a Jacobi iteration). Draft x
  drawn from q is accepted with probability min(1, p(x)/q(x)), p being the exact conditional;
  the first rejected position is resampled from max(p − q, 0) normalised (speculative sampling,
  Leviathan et al. 2023), so every committed token has exactly the non-speculative
  distribution. Under greedy decoding, a draft is accepted when it equals the argmax, and the
  output equals non-speculative greedy decoding.

With `repetition_penalty`, the target at window slot j is penalised with the ids the row
committed plus the tokens fed at slots 1..j (the prefix being verified), so every verified or
decided token sees exactly the seen set the one-token engine would have had.

Each window commits at least one token. Randomness is counter-based (`sampling.step_keys`):
a token decided from p (no draft, or the bonus after all drafts) uses the same Gumbel noise as
the one-token engine, so `draft=False` reproduces it bit for bit; draft draws and acceptance
uniforms are keyed by (row, position, window index). A row's output therefore depends only on
its seed, prompt and settings, not on the batch it shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from illume.inference.decoder import StaticDecoder
from illume.inference.sampling import (
    PIXEL,
    SEMANTIC,
    PhaseTable,
    SamplingConfig,
    cfg_combine,
    filtered_log_probs,
    gumbel_noise,
    penalize_repeats,
    step_keys,
    uniform_noise,
)
from illume.vocab import ImageSchedule, ImageVocabulary

__all__ = ["SPECULATIVE_MODES", "decode_image_rows"]

SPECULATIVE_MODES = ("none", "jacobi")
_DRAFT_TAG, _ACCEPT_TAG = 0x2545F491, 0x68E31DA4


def _stream_keys(keys: torch.Tensor, tag: int, positions: torch.Tensor, window: int) -> torch.Tensor:
    """Keys (B, T) of one random stream for absolute token positions (B, T) in window `window`."""
    return step_keys(step_keys((keys ^ tag)[:, None], positions), window)


class _Layout:
    """Per-row schedules as device tables padded past the end with forced pad tokens."""

    def __init__(self, vocab: ImageVocabulary, schedules: Sequence[ImageSchedule], width: int, device):
        self.lengths = [len(s) for s in schedules]
        padded = max(self.lengths) + 2 * width
        forced = torch.full((len(schedules), padded), vocab.pad, dtype=torch.long)
        level = torch.full((len(schedules), padded), -1, dtype=torch.long)
        for r, s in enumerate(schedules):
            forced[r, : len(s)] = torch.tensor(s.forced)
            level[r, : len(s)] = torch.tensor(s.level)
        self.host_forced = forced.tolist()
        self.host_level = level.tolist()
        self.forced = forced.to(device)
        self.level = level.to(device)
        # The code ids of both levels form one contiguous union; p and q live in its coordinates.
        ranges = [vocab.level_range(lv) for lv in range(2)]
        self.union = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
        self.ranges = ranges
        ids = torch.arange(*self.union, device=device)
        self.id_level = torch.where(ids >= ranges[1][0], 1, 0)

    def forced_run(self, row: int, start: int, cap: int) -> int:
        """Forced positions from `start` on (at most `cap`)."""
        run, table = 0, self.host_forced[row]
        while run < cap and start + run < len(table) and table[start + run] >= 0:
            run += 1
        return run


def decode_image_rows(
    decoder: StaticDecoder,
    vocab: ImageVocabulary,
    prompt,
    schedules: Sequence[ImageSchedule],
    sampling: SamplingConfig,
    keys: torch.Tensor,
    *,
    draft: bool,
    width: int,
    on_step: Callable[[], None] | None = None,
) -> tuple[list[list[int]], int]:
    """Decode one image block per row after `prompt` (`PromptEmbeddings`, CFG halves stacked).

    `width`: tokens per window (drafting: the last token plus `width - 1` guesses; otherwise the
    most a forced run needs). Returns the ids of every row and the number of model forwards.
    """
    if width < 2 and draft:
        raise ValueError(f"speculative decoding needs a window of at least 2 tokens, got {width}")
    device = decoder.device
    batch = len(schedules)
    cfg = sampling.uses_cfg
    total = 2 * batch if cfg else batch
    layout = _Layout(vocab, schedules, width, device)
    if any(s.forced[0] < 0 for s in schedules):
        raise ValueError("an image block must start with a forced token")
    prompt_len = prompt.embeds.shape[1]
    decoder.prefill(prompt.embeds, prompt.attention_mask, None)
    passes = 1
    real = prompt.attention_mask.to(device=device, dtype=torch.bool)
    base_positions = real.sum(-1)  # position id of generated token 0, per forward row
    committed = [[s.forced[0]] for s in schedules]
    count = [1] * batch
    lo_u, hi_u = layout.union
    union_width = hi_u - lo_u
    drafts = torch.zeros(batch, width - 1, dtype=torch.long, device=device)
    draft_logq = torch.full((batch, width - 1, union_width), -math.inf, device=device)
    have_drafts = False  # the first window has no predictions to draft from yet
    penalty = sampling.repetition_penalty
    # Code ids each row has committed, in union coordinates (structure tokens lie outside it).
    seen = torch.zeros(batch, union_width, dtype=torch.bool, device=device) if penalty != 1.0 else None
    tables: dict = {}
    rows_idx = torch.arange(batch, device=device)
    window_index = 0
    if on_step is not None:
        on_step()
    while any(c < n for c, n in zip(count, layout.lengths)):
        live = [r for r in range(batch) if count[r] < layout.lengths[r]]
        if draft:
            step_width = width
        else:
            step_width = 1 + max(layout.forced_run(r, count[r], width - 1) for r in live)
        T = step_width
        n = torch.tensor(count, device=device)
        offsets = torch.arange(T, device=device)
        token_pos = n[:, None] - 1 + offsets[None]  # generated-token index fed at each window slot
        out_pos = token_pos + 1  # index of the token predicted after each slot
        fed_forced = layout.forced.gather(1, token_pos.clamp(max=layout.forced.shape[1] - 1))
        last = torch.tensor([row[-1] for row in committed], device=device)
        guesses = drafts[:, : T - 1] if draft else torch.zeros(batch, T - 1, dtype=torch.long, device=device)
        fed = torch.cat([last[:, None], torch.where(fed_forced[:, 1:] >= 0, fed_forced[:, 1:], guesses)], 1)
        has_guess = torch.full_like(fed_forced[:, 1:], have_drafts, dtype=torch.bool)
        host_levels = [layout.host_level[r][count[r] : count[r] + T] for r in range(batch)]
        out_level = torch.tensor(host_levels, device=device)
        out_forced = layout.forced.gather(1, out_pos)

        # ---- the forward: both CFG halves get the same tokens at the same columns
        inputs = decoder.window_inputs(T)
        start = prompt_len + n - 1
        both = (lambda t: torch.cat([t, t])) if cfg else (lambda t: t)
        inputs.tokens.copy_(both(fed))
        inputs.positions.copy_(base_positions[:, None] + both(token_pos))
        inputs.columns.copy_(prompt_len + both(token_pos))
        filled = prompt_len + max(count) - 1 + T
        cols = torch.arange(decoder.max_len, device=device)
        limit = (both(start)[:, None] + offsets[None])[:, :, None]  # (rows, T, 1)
        prompt_part = torch.zeros(total, decoder.max_len, dtype=torch.bool, device=device)
        prompt_part[:, :prompt_len] = real
        inputs.mask.copy_(torch.where(cols < prompt_len, prompt_part[:, None, :], cols <= limit))
        sampled_levels = {lv for r in live for lv in host_levels[r] if lv >= 0}
        if sampled_levels:
            span = (
                min(layout.ranges[lv][0] for lv in sampled_levels),
                max(layout.ranges[lv][1] for lv in sampled_levels),
            )
        else:
            span = (lo_u, lo_u + 1)
        logits = decoder.window(T, span, filled)
        passes += 1

        # ---- target distributions p at every window slot, in union coordinates
        scores = logits[:batch]
        if seen is not None:
            first_fed = _first_fed_slot(fed, lo_u, union_width)
            slot_seen = seen[:, None] | (first_fed[:, None] <= offsets[None, :, None])  # (B, T, U)
            scores = penalize_repeats(scores, slot_seen[:, :, span[0] - lo_u : span[1] - lo_u], penalty)
        if cfg:
            scores = cfg_combine(scores, logits[batch:], sampling.cfg_scale)
        span_level = layout.id_level[span[0] - lo_u : span[1] - lo_u]
        allowed = (span_level[None, None] == out_level[:, :, None]) | (out_level < 0)[:, :, None]
        scores = scores.masked_fill(~allowed, -math.inf)
        full = torch.full((batch, T, union_width), -math.inf, device=device)
        if sampling.do_sample:
            table = _table(tables, sampling, host_levels, span[1] - span[0], device)
            logp = filtered_log_probs(scores.reshape(batch * T, -1), table).view(batch, T, -1)
        else:
            logp = scores
        full[:, :, span[0] - lo_u : span[1] - lo_u] = logp
        logp = full

        # ---- verify the guesses, decide the first unverified position
        guess_ids = fed[:, 1:] - lo_u
        if sampling.do_sample:
            p_guess = _at(logp[:, : T - 1], guess_ids)
            q_guess = _at(draft_logq[:, : T - 1], guess_ids) if draft else torch.zeros_like(p_guess)
            u = uniform_noise(_stream_keys(keys, _ACCEPT_TAG, out_pos[:, : T - 1], window_index))
            ok = torch.log(u) < p_guess - q_guess
        else:
            ok = logp[:, : T - 1].argmax(-1) == guess_ids
        ok = (ok & has_guess) | (out_forced[:, : T - 1] >= 0)
        accepted = torch.cumprod(ok.long(), dim=1).sum(1)  # leading verified guesses per row
        decide_p = logp[rows_idx, accepted]  # (B, U)
        if draft and sampling.do_sample:
            rejected = accepted < T - 1
            decide_q = draft_logq[rows_idx, accepted.clamp(max=T - 2)]
            residual = (decide_p.exp() - decide_q.exp()).clamp(min=0)
            residual_log = torch.where(residual > 0, residual.log(), -math.inf)
            # A rejection always leaves mass (p ≠ q there); fall back to p against round-off.
            residual_log = torch.where(residual.sum(-1, keepdim=True) > 0, residual_log, decide_p)
            decide_p = torch.where(rejected[:, None], residual_log, decide_p)
        decided_pos = out_pos[rows_idx, accepted]
        if sampling.do_sample:
            ids = torch.arange(lo_u, hi_u, device=device)[None]
            noise = gumbel_noise(step_keys(keys, decided_pos), ids.expand(batch, -1))
            choice = (decide_p + noise).argmax(-1) + lo_u
        else:
            choice = decide_p.argmax(-1) + lo_u
        forced_here = out_forced[rows_idx, accepted]
        choice = torch.where(forced_here >= 0, forced_here, choice)
        if seen is not None:  # commit the verified slots' tokens and the decided one
            seen = slot_seen[rows_idx, accepted]
            code = (choice >= lo_u) & (choice < hi_u)
            seen[rows_idx, (choice - lo_u).clamp(0, union_width - 1)] |= code

        # ---- next drafts: every later window slot's p (stale context), then the newest p
        if draft:
            drafts, draft_logq = _next_drafts(layout, logp, accepted, out_pos, keys, sampling, window_index, T)
            have_drafts = True

        # One device->host transfer per window: accepted counts, fed tokens, decided token.
        host = torch.cat([accepted[:, None], fed, choice[:, None]], dim=1).tolist()
        before = max(count)
        for r in range(batch):
            if count[r] >= layout.lengths[r]:
                continue
            row = host[r]
            new = row[2 : 2 + row[0]] + [row[-1]]
            new = new[: layout.lengths[r] - count[r]]
            committed[r].extend(new)
            count[r] += len(new)
        if on_step is not None:
            for _ in range(max(count) - before):
                on_step()
        window_index += 1
    return committed, passes


def _first_fed_slot(fed: torch.Tensor, lo: int, width: int) -> torch.Tensor:
    """(B, U): the first window slot k >= 1 at which each union id is fed (T where never), so the
    target after slot j has seen an id when its first slot is <= j."""
    batch, T = fed.shape
    ids = fed[:, 1:] - lo
    inside = (ids >= 0) & (ids < width)
    slots = torch.arange(1, T, device=fed.device).expand(batch, -1)
    first = torch.full((batch, width), T, dtype=torch.long, device=fed.device)
    return first.scatter_reduce_(1, ids.clamp(0, width - 1), torch.where(inside, slots, T), reduce="amin")


def _at(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logp (B, T, U) at ids (B, T) (clamped: forced slots are ignored by the caller)."""
    return logp.gather(-1, ids.clamp(0, logp.shape[-1] - 1)[..., None]).squeeze(-1)


def _table(cache: dict, sampling: SamplingConfig, levels: list[list[int]], width: int, device) -> PhaseTable:
    """Phase table of the flattened (row, slot) grid (forced slots: any phase, unused)."""
    key = (tuple(lv for row in levels for lv in row), width)
    if key not in cache:
        phases = [sampling.phase((SEMANTIC, PIXEL)[max(lv, 0)]) for lv in key[0]]
        stages = [phases]
        if sampling.official_double_sampling:
            stages.append([sampling.text for _ in phases])
        cache[key] = PhaseTable.build(stages, device, width)
    return cache[key]


def _next_drafts(
    layout: _Layout,
    logp: torch.Tensor,
    accepted: torch.Tensor,
    out_pos: torch.Tensor,
    keys: torch.Tensor,
    sampling: SamplingConfig,
    window_index: int,
    T: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafts (B, T-1) and their proposal log-probs (B, T-1, U) for the positions after the
    decided one. A position this window predicted keeps that prediction as its proposal; positions
    beyond it propose the newest prediction restricted to their level (uniform over the level
    when that leaves no mass)."""
    batch = logp.shape[0]
    device = logp.device
    slots = accepted[:, None] + 1 + torch.arange(T - 1, device=device)[None]  # window slot of each
    inside = slots < T
    source = logp.gather(1, slots.clamp(max=T - 1)[..., None].expand(-1, -1, logp.shape[-1]))
    positions = out_pos[:, :1] + slots  # absolute token index of each new draft
    level = layout.level.gather(1, positions.clamp(max=layout.level.shape[1] - 1))
    fits = layout.id_level[None, None] == level[..., None]
    restricted = source.masked_fill(~fits, -math.inf)
    restricted = torch.log_softmax(restricted, dim=-1)
    empty = torch.isnan(restricted).any(-1, keepdim=True) | torch.isinf(restricted).all(-1, keepdim=True)
    uniform = torch.where(fits, 0.0, -math.inf)
    proposal = torch.where(inside[..., None], source, torch.where(empty, uniform, restricted))
    proposal = torch.log_softmax(proposal, dim=-1)
    proposal = torch.nan_to_num(proposal, nan=-math.inf)
    if sampling.do_sample:
        ids = torch.arange(proposal.shape[-1], device=device)[None, None].expand(batch, T - 1, -1)
        draw_keys = _stream_keys(keys, _DRAFT_TAG, positions, window_index)
        noise = gumbel_noise(draw_keys.reshape(-1), ids.reshape(batch * (T - 1), -1)).view_as(proposal)
        guess = (proposal + noise).argmax(-1)
    else:
        guess = proposal.argmax(-1)
    return guess + layout.union[0], proposal
