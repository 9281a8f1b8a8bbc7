"""Decoding engine on a tiny random Qwen2 with the golden tiny ILLUME tokenizer's id layout.

The model's head is made adversarial (it strongly prefers structure tokens, end-of-text and
image openers), so grammar violations would show up if the constraints were leaky.
"""

from __future__ import annotations

import pytest
import torch
from illume.inference.decoder import StaticDecoder
from illume.inference.engine import GenerationEngine, PromptEmbeddings, RowSpec
from illume.inference.sampling import SamplingConfig, row_keys
from illume.vocab import RATIOS, ImageGrid, ImageVocabulary
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

ANCHORS = ((256, 256), *RATIOS)


# Tiny models on 2 shared CI cores: thread hand-offs would dominate (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vocab(golden) -> ImageVocabulary:
    return ImageVocabulary.from_tokenizer(AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer"))


def tiny_lm(vocab: ImageVocabulary, tempt: list[int] | None = None, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab.num_tokens + 42,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config).eval()
    if tempt:
        with torch.no_grad():
            model.lm_head.weight[tempt] *= 40.0
    return model


def prompts(model: Qwen2ForCausalLM, batch: int, cfg: bool, seed: int = 1) -> PromptEmbeddings:
    g = torch.Generator().manual_seed(seed)
    rows = 2 * batch if cfg else batch
    ids = torch.randint(0, 300, (rows, 9), generator=g)
    mask = torch.ones(rows, 9, dtype=torch.long)
    for r in range(rows):
        mask[r, : r % 4] = 0
    return PromptEmbeddings(model.get_input_embeddings()(ids).detach(), mask)


def pick(prompt: PromptEmbeddings, rows: list[int]) -> PromptEmbeddings:
    return PromptEmbeddings(prompt.embeds[rows], prompt.attention_mask[rows])


def keys_for(seeds) -> torch.Tensor:
    return row_keys([torch.Generator().manual_seed(s) for s in seeds])


def structure_ids(vocab: ImageVocabulary) -> list[int]:
    return sorted(
        {*vocab.special_tokens_ids, vocab.end_of_text, vocab.pad, *vocab.height_tags, *vocab.width_tags}
    )


def test_static_decoder_matches_transformers_forward(vocab):
    model = tiny_lm(vocab)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 500, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :3] = 0
    nxt = torch.tensor([7, 8, 9])
    with torch.no_grad():
        dec = StaticDecoder(model, 3, 12)
        first = dec.prefill(model.get_input_embeddings()(ids), mask, (0, 1447))
        dec.state.tokens.copy_(nxt)
        dec.state.mask[:, 8] = True
        second = dec.step((400, 900))
        full_ids = torch.cat([ids, nxt[:, None]], 1)
        full_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        ref = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    assert dec.fused is not None  # parity with the fused q/k/v and gate/up weights
    assert torch.allclose(first, ref[:, -2], atol=1e-5)
    assert torch.allclose(second, ref[:, -1, 400:900], atol=1e-5)


def test_decode_step_reading_only_the_filled_cache_bucket_matches_the_full_read(vocab):
    model = tiny_lm(vocab)
    ids = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        dec = StaticDecoder(model, 2, 600)  # longer than one length bucket
        dec.prefill(model.get_input_embeddings()(ids), torch.ones(2, 5, dtype=torch.long), None)
        dec.state.tokens.copy_(torch.tensor([3, 4]))
        dec.state.mask[:, 5] = True
        bucketed = dec.step((0, 300), filled=6)
        full = dec.step((0, 300))
    assert torch.allclose(bucketed, full, atol=1e-6)


def test_every_anchor_obeys_the_grammar_under_an_adversarial_head(vocab):
    model = tiny_lm(vocab, tempt=structure_ids(vocab))
    engine = GenerationEngine(model, vocab)
    grids = [ImageGrid.for_resolution(h, w) for h, w in ANCHORS]
    sampling = SamplingConfig.create(1.0, 64, 0.95, cfg_scale=1.5)
    out = engine.generate(
        prompts(model, len(grids), cfg=True),
        [RowSpec(image=g) for g in grids],
        sampling,
        keys_for(range(len(grids))),
    )
    for tokens, grid in zip(out, grids):
        semantic, pixel = vocab.parse_image_block(tokens, grid)
        assert semantic.max() < vocab.codebook_sizes[0] and pixel.max() < vocab.codebook_sizes[1]


def test_batched_generation_equals_one_by_one(vocab):
    model = tiny_lm(vocab)
    engine = GenerationEngine(model, vocab)
    grids = [
        ImageGrid.for_resolution(256, 256),
        ImageGrid.for_resolution(384, 512),
        ImageGrid.for_resolution(256, 256),
    ]
    sampling = SamplingConfig.create(1.0, 32, 0.9, cfg_scale=2.0)
    prompt = prompts(model, 3, cfg=True)
    seeds = [4, 5, 6]
    together = engine.generate(prompt, [RowSpec(image=g) for g in grids], sampling, keys_for(seeds))
    for r in range(3):
        alone = engine.generate(
            pick(prompt, [r, 3 + r]), [RowSpec(image=grids[r])], sampling, keys_for(seeds[r : r + 1])
        )
        assert alone[0] == together[r]
    assert together[0] != together[2]  # same grid, different seeds and prompts


def test_same_seed_reproduces_and_cfg_changes_the_output(vocab):
    model = tiny_lm(vocab)
    engine = GenerationEngine(model, vocab)
    grid = [RowSpec(image=ImageGrid.for_resolution(256, 256))]
    prompt = prompts(model, 1, cfg=True)
    guided = SamplingConfig.create(1.0, 32, 1.0, cfg_scale=3.0)
    first = engine.generate(prompt, grid, guided, keys_for([9]))
    assert engine.generate(prompt, grid, guided, keys_for([9])) == first
    plain = engine.generate(pick(prompt, [0]), grid, guided.with_cfg(1.0), keys_for([9]))
    assert plain != first


def test_text_rows_stop_at_end_of_text_and_never_emit_image_tokens(vocab):
    tempting = [vocab.start_of_image, *vocab.height_tags, *range(*vocab.level_range(0)), vocab.end_of_line]
    model = tiny_lm(vocab, tempt=tempting)
    engine = GenerationEngine(model, vocab)
    sampling = SamplingConfig.create(1.0, 0, 1.0)
    out = engine.generate(
        prompts(model, 3, cfg=False), [RowSpec()] * 3, sampling, keys_for([1, 2, 3]), max_new_tokens=30
    )
    for tokens in out:
        assert 0 < len(tokens) <= 30
        assert all(t < vocab.start_of_image or t in (vocab.end_of_text, vocab.pad) for t in tokens)
        assert all(t not in (vocab.end_of_text, vocab.pad) for t in tokens[:-1])


def test_interleaved_rows_open_valid_images_and_return_to_text(vocab):
    model = tiny_lm(vocab, tempt=[*vocab.height_tags, vocab.start_of_image])
    engine = GenerationEngine(model, vocab, resolutions=[(256, 256)])
    small = ImageGrid.for_resolution(256, 256)
    spec = RowSpec(allow_images=True, default_grid=small)
    out = engine.generate(
        prompts(model, 2, cfg=True),
        [spec, spec],
        SamplingConfig.create(1.0, 16, 1.0, cfg_scale=2.0),
        keys_for([1, 2]),
        max_new_tokens=12,
    )
    for tokens in out:
        blocks = vocab.extract_image_codes(tokens, small)
        assert blocks, "the tempted head should open at least one image"
        start = tokens.index(vocab.start_of_image)
        if start >= 2 and tokens[start - 2] in vocab.height_tags:
            assert tokens[start - 2 : start] == vocab.resolution_tag_ids(256, 256)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_path_equals_eager(vocab):
    model = tiny_lm(vocab).cuda()
    grids = [ImageGrid.for_resolution(256, 256), ImageGrid.for_resolution(384, 512)]
    sampling = SamplingConfig.create(1.0, 32, 0.9, cfg_scale=2.0)
    prompt = prompts(model, 2, cfg=True)
    prompt = PromptEmbeddings(prompt.embeds.cuda(), prompt.attention_mask.cuda())
    specs = [RowSpec(image=g) for g in grids]
    eager = GenerationEngine(model, vocab, use_cuda_graphs=False).generate(
        prompt, specs, sampling, keys_for([1, 2])
    )
    graphed = GenerationEngine(model, vocab, use_cuda_graphs=True).generate(
        prompt, specs, sampling, keys_for([1, 2])
    )
    assert graphed == eager
