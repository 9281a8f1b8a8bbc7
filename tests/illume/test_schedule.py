"""Image-grammar plans and a property test of the engine's constraints over random logits.

The decoder is replaced by one that returns fresh random logits (large spread) at every step, so
whatever the constraints let through would be sampled sooner or later.
"""

from __future__ import annotations

import pytest
import torch
from illume.inference.decoder import StaticDecoder
from illume.inference.engine import GenerationEngine, PromptEmbeddings, RowSpec
from illume.inference.sampling import PIXEL, SEMANTIC, SamplingConfig, row_keys
from illume.inference.schedule import GENERATION_RESOLUTIONS, TextRules
from illume.vocab import RATIOS, ImageGrid, ImageVocabulary
from transformers import AutoTokenizer

from tests.illume.test_engine import tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py


@pytest.fixture(scope="module")
def vocab(golden) -> ImageVocabulary:
    return ImageVocabulary.from_tokenizer(AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer"))


class RandomLogitsDecoder(StaticDecoder):
    """Keeps the cache bookkeeping, skips the transformer, and emits random logits."""

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(seed)

    def _forward(self, embeds, positions, write_slots, mask):
        return torch.zeros(embeds.shape)

    def _head(self, hidden, span):
        return torch.randn(*hidden.shape[:-1], span[1] - span[0], generator=self.generator) * 8


def random_engine(vocab, monkeypatch, seed, **kwargs) -> GenerationEngine:
    engine = GenerationEngine(tiny_lm(vocab), vocab, **kwargs)
    monkeypatch.setattr(
        engine,
        "_decoder_for",
        lambda rows, max_len: RandomLogitsDecoder(engine.model, rows, max_len, seed=seed),
    )
    return engine


def test_schedule_counts_and_forced_positions(vocab):
    grid = ImageGrid.for_resolution(384, 512)
    plan = vocab.schedule(grid)
    assert len(plan) == grid.num_tokens == 1002
    assert plan.level.count(SEMANTIC - 1) == 12 * 16 and plan.level.count(PIXEL - 1) == 24 * 32
    assert all((f >= 0) == (lv < 0) for f, lv in zip(plan.forced, plan.level))


def test_text_rules_ban_in_image_markers_and_unknown_heights(vocab):
    rules = TextRules(vocab, [(256, 256), (384, 512)])
    banned = set(rules.text(allow_images=True).banned)
    assert {vocab.end_of_line, vocab.end_of_image, *vocab.start_of_levels, *vocab.width_tags} <= banned
    assert vocab.height_tag_id(256) not in banned and vocab.height_tag_id(512) in banned
    assert vocab.start_of_image not in banned
    assert {vocab.start_of_image, *vocab.height_tags} <= set(rules.text(allow_images=False).banned)
    after = rules.after_height(384)
    assert [t for t in range(after.lo, after.hi) if t not in after.banned] == [vocab.width_tag_id(512)]
    with pytest.raises(ValueError, match="no <height_"):
        TextRules(vocab, [(100, 256)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_logits_never_break_the_grammar_at_any_anchor(vocab, monkeypatch, seed):
    engine = random_engine(vocab, monkeypatch, seed)
    grids = [ImageGrid.for_resolution(h, w) for h, w in ((256, 256), *RATIOS)]
    sampling = SamplingConfig.create(1.5, 0, 1.0, cfg_scale=3.0, official_double_sampling=seed == 1)
    model = engine.model
    embeds = model.get_input_embeddings()(torch.randint(0, 300, (2 * len(grids), 5))).detach()
    prompt = PromptEmbeddings(embeds, torch.ones(2 * len(grids), 5, dtype=torch.long))
    keys = row_keys([torch.Generator().manual_seed(seed * 100 + i) for i in range(len(grids))])
    out = engine.generate(prompt, [RowSpec(image=g) for g in grids], sampling, keys)
    for tokens, grid in zip(out, grids):
        vocab.parse_image_block(tokens, grid)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_logits_in_interleaved_text_keep_images_well_formed(vocab, monkeypatch, seed):
    engine = random_engine(vocab, monkeypatch, seed, resolutions=GENERATION_RESOLUTIONS[:3])
    spec = RowSpec(allow_images=True, default_grid=ImageGrid.for_resolution(256, 256))
    embeds = engine.model.get_input_embeddings()(torch.randint(0, 300, (8, 4))).detach()
    keys = row_keys([torch.Generator().manual_seed(seed + i) for i in range(4)])
    out = engine.generate(
        PromptEmbeddings(embeds, torch.ones(8, 4, dtype=torch.long)), [spec] * 4,
        SamplingConfig.create(2.0, 0, 1.0, cfg_scale=2.0), keys, max_new_tokens=200,
    )  # fmt: skip
    allowed_grids = {ImageGrid.for_resolution(h, w) for h, w in GENERATION_RESOLUTIONS[:3]}
    lo = min(vocab.level_offsets)
    for tokens in out:
        blocks = vocab.extract_image_codes(tokens)
        assert all(ImageGrid(tuple(s.shape), tuple(p.shape)) in allowed_grids for s, p in blocks)
        text = list(tokens)
        while vocab.start_of_image in text:
            start = text.index(vocab.start_of_image)
            text = text[:start] + text[text.index(vocab.end_of_image, start) + 1 :]
        assert all(t < lo for t in text)
        assert all(t not in (vocab.end_of_text, vocab.pad) for t in text[:-1])
