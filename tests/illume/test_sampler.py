"""Sampling: CFG math by hand, official parameter derivation, filters, reproducible draws."""

from __future__ import annotations

import math

import pytest
import torch
from illume.inference.sampling import (
    PhaseTable,
    SamplingConfig,
    SamplingParams,
    cfg_combine,
    filtered_log_probs,
    gumbel_noise,
    row_keys,
    sample_tokens,
    step_keys,
    uniform_noise,
)


def _log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    norm = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - norm for v in values]


def test_cfg_combine_matches_hand_computation():
    cond, uncond, g = [2.0, 0.5, -1.0], [0.0, 1.0, 0.3], 1.5
    lc, lu = _log_softmax(cond), _log_softmax(uncond)
    expected = [g * (c - u) + u for c, u in zip(lc, lu)]
    got = cfg_combine(torch.tensor([cond]), torch.tensor([uncond]), g)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_cfg_scale_one_is_the_conditional_distribution():
    cond = torch.randn(2, 7)
    got = cfg_combine(cond, torch.randn(2, 7), 1.0)
    assert torch.allclose(got, torch.log_softmax(cond, -1), atol=1e-6)


def test_cfg_on_a_slice_differs_from_full_vocabulary_by_a_row_constant():
    cond, uncond = torch.randn(3, 50), torch.randn(3, 50)
    full = cfg_combine(cond, uncond, 2.5)[:, 10:30]
    sliced = cfg_combine(cond[:, 10:30], uncond[:, 10:30], 2.5)
    shift = full - sliced
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)


def test_official_defaults_derive_image_phases():
    cfg = SamplingConfig.create(0.7, 512, 0.8, cfg_scale=1.25)
    assert cfg.semantic == SamplingParams(0.7, 512, 0.8)
    assert cfg.pixel == SamplingParams(0.7, 1536, 0.8)
    custom = SamplingConfig.create(1.0, 128, 1.0, semantic_top_k=2024, semantic_temperature=0.9)
    assert custom.semantic == SamplingParams(0.9, 2024, 1.0)
    assert custom.pixel == SamplingParams(0.9, 6072, 1.0)


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_params_raise(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def _table(params, device="cpu", second=None):
    stages = [params] if second is None else [params, second]
    return PhaseTable.build(stages, device)


def test_top_k_one_and_greedy_pick_the_maximum():
    scores = torch.randn(4, 30)
    keys = row_keys([torch.Generator().manual_seed(i) for i in range(4)])
    table = _table([SamplingParams(1.0, 1, 1.0)] * 4)
    expected = scores.argmax(-1) + 5
    assert torch.equal(sample_tokens(scores, table, keys, id_offset=5), expected)
    assert torch.equal(sample_tokens(scores, table, keys, id_offset=5, greedy=True), expected)


def test_top_p_keeps_the_nucleus_only():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two.
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    scores = probs.log()
    table = _table([SamplingParams(1.0, 0, 0.7)])
    seen = set()
    for seed in range(200):
        keys = row_keys([torch.Generator().manual_seed(seed)])
        seen.add(int(sample_tokens(scores, table, keys)))
    assert seen == {0, 1}


def test_draws_follow_the_softmax_distribution():
    logits = torch.tensor([[1.0, 0.0, -0.5, 2.0]])
    expected = torch.softmax(logits[0], -1)
    n = 4000
    keys = row_keys([torch.Generator().manual_seed(11)])
    table = _table([SamplingParams()])
    draws = torch.cat([sample_tokens(logits, table, step_keys(keys, s)) for s in range(n)])
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq, expected, atol=0.03)


def test_double_sampling_equals_squared_temperature_and_min_top_k():
    scores = torch.randn(6, 40)
    keys = row_keys([torch.Generator().manual_seed(i) for i in range(6)])
    double = _table([SamplingParams(0.7, 9, 1.0)] * 6, second=[SamplingParams(0.7, 4, 1.0)] * 6)
    single = _table([SamplingParams(0.49, 4, 1.0)] * 6)
    for step in range(20):
        k = step_keys(keys, step)
        assert torch.equal(sample_tokens(scores, double, k), sample_tokens(scores, single, k))


def test_draws_depend_only_on_the_row_key_and_step():
    scores = torch.randn(3, 100)
    keys = row_keys([torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    table = _table([SamplingParams(1.0, 20, 0.9)] * 3)
    together = sample_tokens(scores, table, step_keys(keys, 3))
    alone = torch.cat(
        [
            sample_tokens(
                scores[r : r + 1], _table([SamplingParams(1.0, 20, 0.9)]), step_keys(keys[r : r + 1], 3)
            )
            for r in range(3)
        ]
    )
    assert torch.equal(together, alone)
    again = row_keys([torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    assert torch.equal(keys, again)


def test_gumbel_noise_is_finite_and_roughly_standard():
    keys = torch.arange(64, dtype=torch.int64)
    noise = gumbel_noise(keys, torch.arange(1000).expand(64, 1000))
    assert torch.isfinite(noise).all()
    assert abs(noise.mean().item() - 0.5772) < 0.02
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.05


def test_filtered_log_probs_is_the_distribution_sample_tokens_draws_from():
    # Hand-computed: temperature 0.5, top-k 3, then top-p 0.9 over scores [3, 2, 1, 0, -1].
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    table = PhaseTable.build([[SamplingParams(0.5, 3, 0.9)]], "cpu", width=5)
    kept = [6.0, 4.0, 2.0]  # scores / 0.5 of the top 3
    probs = [math.exp(v) for v in _log_softmax(kept)]
    # mass before the third is probs[0] + probs[1] >= 0.9, so top-p drops it
    assert probs[0] + probs[1] >= 0.9
    expected = _log_softmax(kept[:2]) + [-math.inf] * 3
    assert torch.allclose(filtered_log_probs(scores, table)[0], torch.tensor(expected), atol=1e-6)
    # Gumbel-max draws with counter-based keys follow it (chi-square, 1 dof, p = 1e-6).
    draws = 20000
    keys = step_keys(torch.arange(draws, dtype=torch.int64) * 7919, 3)
    tokens = sample_tokens(scores.expand(draws, -1), table, keys)
    counts = torch.bincount(tokens, minlength=5).double()
    assert counts[2:].sum() == 0
    p0 = math.exp(expected[0])
    stat = (counts[0] - draws * p0) ** 2 / (draws * p0 * (1 - p0))
    assert stat < 23.9


def test_uniform_noise_is_uniform_and_independent_of_the_gumbel_noise():
    keys = step_keys(torch.arange(50000, dtype=torch.int64), 11)
    u = uniform_noise(keys)
    assert 0 < float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u, bins=10, min=0, max=1)
    expected = 5000.0
    assert float(((counts - expected) ** 2 / expected).sum()) < 37.9  # chi-square, 9 dof, p = 1e-5
    gumbel = gumbel_noise(keys, torch.zeros(50000, 1, dtype=torch.int64))[:, 0]
    correlation = torch.corrcoef(torch.stack([u, gumbel]))[0, 1]
    assert abs(float(correlation)) < 0.03
