"""Multi-token windows and speculative Jacobi decoding (SJD) of image rows on tiny random models.

Independent expectations: the one-token engine (`GenerationEngine.stream`, the reference path
for every row kind), the transformers forward, the image grammar, and for sampling a chi-square
bound on per-position token histograms (exact first-position probabilities from the model, and
two-sample comparisons with the one-token engine further on).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from illume.inference import sampling as sampling_module
from illume.inference import speculative
from illume.inference.decoder import StaticDecoder
from illume.inference.engine import GenerationEngine, PromptEmbeddings, RowSpec
from illume.inference.sampling import PhaseTable, SamplingConfig, cfg_combine, filtered_log_probs
from illume.vocab import ImageGrid, ImageVocabulary
from scipy.stats import chi2
from transformers import AutoTokenizer, RepetitionPenaltyLogitsProcessor

from tests.illume.test_engine import keys_for, prompts, structure_ids, tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py


@pytest.fixture(scope="module")
def vocab(golden) -> ImageVocabulary:
    return ImageVocabulary.from_tokenizer(AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer"))


def one_token_reference(engine: GenerationEngine, prompt, specs, sampling, keys) -> tuple[list[list[int]], int]:
    """Ids of the one-token-per-step engine and its forward passes."""
    before = engine.forward_passes
    columns, masks = [], []
    for tokens, active in engine.stream(prompt, specs, sampling, keys):
        columns.append(tokens)
        masks.append(active)
    table = torch.stack(columns, 1).tolist()
    out = [[t for t, m in zip(row, (mask[r] for mask in masks)) if m] for r, row in enumerate(table)]
    return out, engine.forward_passes - before


def passes(engine: GenerationEngine, *args, **kwargs) -> tuple[list[list[int]], int]:
    before = engine.forward_passes
    out = engine.generate(*args, **kwargs)
    return out, engine.forward_passes - before


@pytest.mark.parametrize(
    "resolutions, cfg_scale, penalty",
    [
        (((384, 512), (512, 384), (256, 256)), 2.5, 1.0),
        (((256, 256), (128, 384)), 1.0, 1.0),
        (((512, 384),), 1.5, 1.0),  # an anchor alone
        (((256, 256), (128, 384)), 2.5, 1.3),  # repetition penalty: in-window seen sets matter
        (((256, 256),), 1.0, 1.05),  # the Qwen2.5-Instruct generation_config value, no CFG
    ],
)
def test_greedy_jacobi_equals_one_token_decoding_in_fewer_passes(vocab, resolutions, cfg_scale, penalty):
    model = tiny_lm(vocab, tempt=structure_ids(vocab))  # adversarial head: leaks would show
    engine = GenerationEngine(model, vocab)
    grids = [ImageGrid.for_resolution(h, w) for h, w in resolutions]
    specs = [RowSpec(image=g) for g in grids]
    sampling = SamplingConfig.create(
        1.0, 64, 1.0, cfg_scale=cfg_scale, do_sample=False, repetition_penalty=penalty
    )
    prompt = prompts(model, len(grids), cfg=sampling.uses_cfg)
    keys = keys_for(range(len(grids)))
    reference, reference_passes = one_token_reference(engine, prompt, specs, sampling, keys)
    plain, plain_passes = passes(engine, prompt, specs, sampling, keys, speculative="none")
    jacobi, jacobi_passes = passes(engine, prompt, specs, sampling, keys, speculative="jacobi")
    assert plain == reference and jacobi == reference
    for tokens, grid in zip(jacobi, grids):
        vocab.parse_image_block(tokens, grid)
    assert reference_passes == max(g.num_tokens for g in grids)
    # Forced structure tokens ride along: one pass per code of the longest row, plus prefill.
    codes = max(g.num_semantic + g.num_pixel for g in grids)
    assert plain_passes <= codes + 2 < reference_passes
    assert jacobi_passes < plain_passes
    if penalty != 1.0:  # the penalty is really applied (these random heads repeat codes)
        unpenalized = replace(sampling, repetition_penalty=1.0)
        assert engine.generate(prompt, specs, unpenalized, keys, speculative="jacobi") != reference


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_windows_without_drafts_reproduce_sampled_one_token_decoding(vocab, penalty):
    model = tiny_lm(vocab)
    engine = GenerationEngine(model, vocab)
    grids = [ImageGrid.for_resolution(256, 256), ImageGrid.for_resolution(128, 192)]
    specs = [RowSpec(image=g) for g in grids]
    sampling = SamplingConfig.create(0.9, 48, 0.9, cfg_scale=2.0, repetition_penalty=penalty)
    prompt = prompts(model, 2, cfg=True)
    reference, reference_passes = one_token_reference(engine, prompt, specs, sampling, keys_for([3, 4]))
    plain, plain_passes = passes(engine, prompt, specs, sampling, keys_for([3, 4]), speculative="none")
    assert plain == reference and plain_passes < reference_passes


def test_sampled_jacobi_is_reproducible_and_batch_independent(vocab):
    model = tiny_lm(vocab)
    engine = GenerationEngine(model, vocab)
    grids = [ImageGrid.for_resolution(128, 128), ImageGrid.for_resolution(64, 192)]
    specs = [RowSpec(image=g) for g in grids]
    sampling = SamplingConfig.create(1.0, 32, 0.95, cfg_scale=2.0)
    prompt = prompts(model, 2, cfg=True)
    together = engine.generate(prompt, specs, sampling, keys_for([5, 6]), speculative="jacobi", window=6)
    assert engine.generate(prompt, specs, sampling, keys_for([5, 6]), speculative="jacobi", window=6) == together
    alone = engine.generate(
        PromptEmbeddings(prompt.embeds[[1, 3]], prompt.attention_mask[[1, 3]]),
        specs[1:], sampling, keys_for([6]), speculative="jacobi", window=6,
    )  # fmt: skip
    assert alone[0] == together[1]
    for tokens, grid in zip(together, grids):
        vocab.parse_image_block(tokens, grid)


def test_window_step_matches_the_transformers_forward_at_per_row_columns(vocab):
    model = tiny_lm(vocab)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 500, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    extra = torch.randint(0, 500, (2, 5), generator=g)
    with torch.no_grad():
        dec = StaticDecoder(model, 2, 16)
        dec.prefill(model.get_input_embeddings()(ids), mask, None)
        # Row 0 feeds extra[0, :3] at columns 6..8; row 1 (one token further) extra[1, 1:4] at 7..9.
        dec.state.tokens.copy_(torch.stack([extra[0, 0], extra[1, 0]]))
        dec.state.mask[:, 6] = True
        dec.step(None)  # writes row 1's extra[1, 0] (and a throwaway for row 0) at column 6
        inputs = dec.window_inputs(3)
        starts = torch.tensor([6, 7])
        inputs.tokens.copy_(torch.stack([extra[0, :3], extra[1, 1:4]]))
        inputs.columns.copy_(starts[:, None] + torch.arange(3))
        inputs.positions.copy_(mask.sum(-1)[:, None] + torch.tensor([[0, 1, 2], [1, 2, 3]]))
        cols = torch.arange(16)
        seen = torch.cat([mask.bool(), torch.ones(2, 10, dtype=torch.bool)], 1)
        inputs.mask.copy_(seen[:, None] & (cols[None, None] <= (starts[:, None] + torch.arange(3))[..., None]))
        got = dec.window(3, (100, 1400), 10)
        for r, fed in ((0, extra[0, :3]), (1, extra[1, :4])):
            full_ids = torch.cat([ids[r], fed])[None]
            full_mask = torch.cat([mask[r], torch.ones(len(fed), dtype=torch.long)])[None]
            ref = model(input_ids=full_ids, attention_mask=full_mask,
                        position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[0, -3:, 100:1400]  # fmt: skip
            assert torch.allclose(got[r], ref, atol=1e-5)


def test_fused_projections_keep_the_checkpoint_keys_and_share_storage(vocab):
    model = tiny_lm(vocab)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dec = StaticDecoder(model, 1, 8)
    after = model.state_dict()
    assert dec.fused is not None and list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    attn = model.model.layers[0].self_attn
    fused = dec.fused[0].qkv_weight
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()  # a view, no copy
    assert attn.v_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert StaticDecoder(model, 1, 8).fused is dec.fused  # fused once per model


def test_top_k_filters_that_cannot_drop_anything_are_skipped():
    params = [sampling_module.SamplingParams(1.0, 6144, 1.0)]
    assert not PhaseTable.build([params], "cpu", width=768).needs_sort
    assert PhaseTable.build([params], "cpu", width=32768).needs_sort
    scores = torch.randn(1, 768)
    keys = keys_for([1])
    on = PhaseTable.build([params], "cpu")  # full sort with k >= n
    off = PhaseTable.build([params], "cpu", width=768)
    assert torch.equal(sampling_module.sample_tokens(scores, on, keys), sampling_module.sample_tokens(scores, off, keys))


def test_calls_with_other_prompt_lengths_reuse_the_decoder(vocab):
    model = tiny_lm(vocab)
    engine = GenerationEngine(model, vocab)
    spec = [RowSpec(image=ImageGrid.for_resolution(64, 64))]
    sampling = SamplingConfig.create(1.0, 16, 1.0, cfg_scale=2.0)
    for length in (9, 5, 30):
        prompt = prompts(model, 1, cfg=True)
        prompt = PromptEmbeddings(prompt.embeds[:, :length], prompt.attention_mask[:, :length])
        engine.generate(prompt, spec, sampling, keys_for([1]), speculative="jacobi")
        engine.generate(prompt, spec, sampling, keys_for([1]))
    assert engine.decoder_builds == 1


# ---------------------------------------------------------------- distribution of sampled output
GRID = ImageGrid.for_resolution(64, 64)  # 2x2 semantic + 4x4 pixel codes, 32 tokens
SAMPLES = 300
ALPHA = 1e-4  # per test, Bonferroni-split over positions: deterministic seeds, so no flakiness


def _peaked_model(vocab: ImageVocabulary):
    """A tiny model whose code distributions are peaked and depend on the context, so wrong
    acceptance (e.g. accepting every draft) changes the output distribution visibly."""
    model = tiny_lm(vocab, seed=7)
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
        model.model.embed_tokens.weight.mul_(4.0)
    return model


def _histograms(tokens: list[list[int]], positions: list[int], vocab: ImageVocabulary) -> torch.Tensor:
    """(positions, level-1 width) counts of the ids at each block position."""
    lo = vocab.level_offsets[0]
    width = vocab.level_range(1)[1] - lo
    counts = torch.zeros(len(positions), width)
    for row in tokens:
        for i, pos in enumerate(positions):
            counts[i, row[pos] - lo] += 1
    return counts


def _two_sample_chi2(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Chi-square statistic of two histograms and its dof; bins with fewer than 10 counts in
    both together are pooled into one (keeps the chi-square approximation valid)."""
    keep = (a + b) >= 10
    a = torch.cat([a[keep], a[~keep].sum()[None]])
    b = torch.cat([b[keep], b[~keep].sum()[None]])
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    na, nb = a.sum(), b.sum()
    expected_a = (a + b) * na / (na + nb)
    expected_b = (a + b) * nb / (na + nb)
    stat = ((a - expected_a) ** 2 / expected_a + (b - expected_b) ** 2 / expected_b).sum()
    return float(stat), int(keep.sum()) - 1


def _sample(engine, prompt_one, sampling, seeds, speculative):
    n = len(seeds)
    rows = [0] * n + [1] * n
    prompt = PromptEmbeddings(prompt_one.embeds[rows], prompt_one.attention_mask[rows])
    return engine.generate(
        prompt, [RowSpec(image=GRID)] * n, sampling, keys_for(seeds), speculative=speculative, window=8
    )


def test_sampled_jacobi_has_the_one_token_distribution(vocab, monkeypatch):
    model = _peaked_model(vocab)
    engine = GenerationEngine(model, vocab)
    sampling = SamplingConfig.create(1.0, 6, 1.0, cfg_scale=1.5)
    prompt = prompts(model, 1, cfg=True, seed=3)
    schedule = vocab.schedule(GRID)
    codes = [i for i, lv in enumerate(schedule.level) if lv >= 0]

    plain = _sample(engine, prompt, sampling, range(SAMPLES), "none")
    jacobi = _sample(engine, prompt, sampling, range(SAMPLES, 2 * SAMPLES), "jacobi")
    # Compare where the one-token output is random (>= 3 ids seen 20 times); the peaked model makes
    # some late positions nearly deterministic.
    counts = _histograms(plain, codes, vocab)
    probe = [pos for pos, row in zip(codes, counts) if int((row >= 20).sum()) >= 3]
    assert len(probe) >= 6 and probe[0] == codes[0], probe
    h_plain, h_jacobi = _histograms(plain, probe, vocab), _histograms(jacobi, probe, vocab)

    # Exact distribution of the first code (prompt, <start_of_image>, <start_of_level0> before it).
    first = schedule.forced[: codes[0]]
    with torch.no_grad():
        embeds = torch.cat([prompt.embeds, model.get_input_embeddings()(torch.tensor([first] * 2))], 1)
        mask = torch.cat([prompt.attention_mask, torch.ones(2, len(first), dtype=torch.long)], 1)
        lo, hi = vocab.level_range(0)
        logits = engine.next_token_logits(PromptEmbeddings(embeds, mask), (lo, hi))
    guided = cfg_combine(logits[:1], logits[1:], sampling.cfg_scale)
    table = PhaseTable.build([[sampling.semantic]], "cpu", hi - lo)
    exact = filtered_log_probs(guided, table).exp()[0]
    observed = h_jacobi[0, : hi - lo]
    support = exact > 0
    assert observed[~support].sum() == 0  # never outside top-k
    expected = exact[support] * SAMPLES
    stat = float(((observed[support] - expected) ** 2 / expected).sum())
    limit = chi2.ppf(1 - ALPHA, int(support.sum()) - 1)
    assert stat < limit, (stat, limit)

    limits = []
    for i in range(len(probe)):
        stat, dof = _two_sample_chi2(h_plain[i], h_jacobi[i])
        limits.append(chi2.ppf(1 - ALPHA / len(probe), dof))
        assert stat < limits[-1], (probe[i], stat, limits[-1])

    # Drafts from a proposal far from p (the inverse ranking within the top-k) must still give
    # p's distribution; accepting such drafts without the min(1, p/q) rule must be detected.
    real_drafts = speculative._next_drafts

    def inverted_proposals(layout, logp, *args):
        return real_drafts(layout, torch.where(torch.isfinite(logp), -logp, -torch.inf), *args)

    monkeypatch.setattr(speculative, "_next_drafts", inverted_proposals)
    corrected = _histograms(_sample(engine, prompt, sampling, range(2 * SAMPLES, 3 * SAMPLES), "jacobi"), probe, vocab)
    for i in range(len(probe)):
        assert _two_sample_chi2(h_plain[i], corrected[i])[0] < limits[i], probe[i]
    monkeypatch.setattr(speculative, "uniform_noise", lambda keys: torch.zeros(keys.shape))
    accepted = _histograms(_sample(engine, prompt, sampling, range(2 * SAMPLES, 3 * SAMPLES), "jacobi"), probe, vocab)
    wrong = [_two_sample_chi2(h_plain[i], accepted[i])[0] for i in range(len(probe))]
    assert any(stat > limit for stat, limit in zip(wrong, limits)), (wrong, limits)


def test_penalized_sampled_jacobi_has_the_one_token_distribution(vocab):
    """With a repetition penalty, SJD and windows without drafts (bit-identical to the one-token
    engine, test above) give the same per-position histograms."""
    model = _peaked_model(vocab)
    engine = GenerationEngine(model, vocab)
    sampling = SamplingConfig.create(1.0, 6, 1.0, cfg_scale=1.5, repetition_penalty=1.15)
    prompt = prompts(model, 1, cfg=True, seed=3)
    codes = [i for i, lv in enumerate(vocab.schedule(GRID).level) if lv >= 0]
    plain = _sample(engine, prompt, sampling, range(SAMPLES), "none")
    jacobi = _sample(engine, prompt, sampling, range(SAMPLES, 2 * SAMPLES), "jacobi")
    counts = _histograms(plain, codes, vocab)
    probe = [pos for pos, row in zip(codes, counts) if int((row >= 20).sum()) >= 3]
    assert len(probe) >= 6, probe
    off = replace(sampling, repetition_penalty=1.0)
    unpenalized = _histograms(_sample(engine, prompt, off, range(SAMPLES), "none"), probe, vocab)
    h_plain, h_jacobi = _histograms(plain, probe, vocab), _histograms(jacobi, probe, vocab)
    assert not torch.equal(h_plain, unpenalized)  # the penalty changes what is sampled
    for i in range(len(probe)):
        stat, dof = _two_sample_chi2(h_plain[i], h_jacobi[i])
        assert stat < chi2.ppf(1 - ALPHA / len(probe), dof), (probe[i], stat)


def test_penalized_window_targets_equal_the_transformers_forward_on_the_committed_prefix(vocab, monkeypatch):
    """Sampled SJD with a repetition penalty: every target p the windows use to verify a draft or
    decide a token (slots up to the first rejection, whose prefix is committed output) equals the
    sequential conditional: a transformers forward of prompt + output, transformers' own
    repetition penalty over the ids generated before that position, CFG, level mask and filters.
    A window that penalised only the ids committed before it is caught."""
    model = tiny_lm(vocab, seed=3)
    engine = GenerationEngine(model, vocab)
    grids = [ImageGrid.for_resolution(128, 128), ImageGrid.for_resolution(64, 192)]
    sampling = SamplingConfig.create(1.0, 24, 0.95, cfg_scale=2.0, repetition_penalty=1.3)
    prompt = prompts(model, 2, cfg=True, seed=5)
    lo_u = vocab.level_range(0)[0]

    def windows_and_output() -> tuple[list, list[list[int]]]:
        recorded = []
        real = speculative._next_drafts

        def record(layout, logp, accepted, out_pos, *args):
            recorded.append((logp.clone(), accepted.clone(), out_pos.clone()))
            return real(layout, logp, accepted, out_pos, *args)

        with monkeypatch.context() as patch:
            patch.setattr(speculative, "_next_drafts", record)
            out = engine.generate(prompt, [RowSpec(image=g) for g in grids], sampling, keys_for([8, 9]),
                                  speculative="jacobi", window=6)  # fmt: skip
        return recorded, out

    def mismatches(recorded, out) -> tuple[int, int]:
        checked = wrong = 0
        for r, (tokens, grid) in enumerate(zip(out, grids)):
            schedule = vocab.schedule(grid)
            rows = [r, r + len(grids)]  # conditional and unconditional prompt, same tokens after it
            fed = model.get_input_embeddings()(torch.tensor([tokens] * 2))
            embeds = torch.cat([prompt.embeds[rows], fed], 1)
            mask = torch.cat([prompt.attention_mask[rows], torch.ones(2, len(tokens), dtype=torch.long)], 1)
            with torch.no_grad():
                logits = model(inputs_embeds=embeds, attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits  # fmt: skip
            penalty = RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)
            for logp, accepted, out_pos in recorded:
                for slot in range(int(accepted[r]) + 1):
                    t = int(out_pos[r, slot])
                    if t >= len(tokens) or schedule.level[t] < 0:
                        continue
                    level = schedule.level[t]
                    lo, hi = vocab.level_range(level)
                    at = prompt.embeds.shape[1] + t - 1  # the logits that predict token t
                    cond = penalty(torch.tensor([tokens[:t]]), logits[:1, at].clone())
                    guided = cfg_combine(cond[:, lo:hi], logits[1:, at, lo:hi], sampling.cfg_scale)
                    phase = sampling.semantic if level == 0 else sampling.pixel
                    expected = filtered_log_probs(guided, PhaseTable.build([[phase]], "cpu", hi - lo))[0]
                    got = logp[r, slot, lo - lo_u : hi - lo_u]
                    checked += 1
                    wrong += not torch.allclose(got.exp(), expected.exp(), atol=1e-5)
        return checked, wrong

    checked, wrong = mismatches(*windows_and_output())
    codes = sum(g.num_semantic + g.num_pixel for g in grids)
    assert wrong == 0 and checked >= codes, (checked, wrong)  # every code is decided somewhere
    real_first = speculative._first_fed_slot

    def committed_only(fed, lo, width):  # forget the tokens fed earlier in the window
        return torch.full_like(real_first(fed, lo, width), fed.shape[1])

    monkeypatch.setattr(speculative, "_first_fed_slot", committed_only)
    assert mismatches(*windows_and_output())[1] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_windows_equal_eager_and_bf16_jacobi_keeps_the_grammar(vocab):
    model = tiny_lm(vocab).cuda()
    grids = [ImageGrid.for_resolution(256, 256), ImageGrid.for_resolution(384, 512)]
    specs = [RowSpec(image=g) for g in grids]
    prompt = prompts(model, 2, cfg=True)
    prompt = PromptEmbeddings(prompt.embeds.cuda(), prompt.attention_mask.cuda())
    for sampling in (SamplingConfig.create(1.0, 32, 0.9, cfg_scale=2.0), SamplingConfig.create(do_sample=False, cfg_scale=2.0)):
        for mode in ("none", "jacobi"):
            eager = GenerationEngine(model, vocab, use_cuda_graphs=False)
            graphed = GenerationEngine(model, vocab, use_cuda_graphs=True)
            expected = eager.generate(prompt, specs, sampling, keys_for([1, 2]), speculative=mode)
            assert graphed.generate(prompt, specs, sampling, keys_for([1, 2]), speculative=mode) == expected
            captures = graphed._decoder.captures
            assert graphed.generate(prompt, specs, sampling, keys_for([1, 2]), speculative=mode) == expected
            assert graphed._decoder.captures == captures > 0  # replayed, not recaptured
    half = tiny_lm(vocab).cuda().to(torch.bfloat16)
    engine = GenerationEngine(half, vocab)
    prompt = PromptEmbeddings(prompt.embeds.to(torch.bfloat16), prompt.attention_mask)
    sampling = SamplingConfig.create(1.0, 32, 1.0, cfg_scale=2.0)
    out, jacobi_passes = passes(engine, prompt, specs, sampling, keys_for([1, 2]), speculative="jacobi")
    for tokens, grid in zip(out, grids):
        vocab.parse_image_block(tokens, grid)
    assert jacobi_passes < passes(engine, prompt, specs, sampling, keys_for([1, 2]), speculative="none")[1]
