"""Weight-only int8 quantization of the LLM (torchao) on CPU: smaller layers, close logits, same decoding path."""

from __future__ import annotations

import pytest
import torch
from illume.inference.decoder import StaticDecoder
from illume.inference.engine import GenerationEngine, RowSpec
from illume.inference.sampling import SamplingConfig
from illume.vocab import ImageGrid, ImageVocabulary
from transformers import AutoTokenizer

from tests.illume.test_engine import keys_for, prompts, tiny_lm  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py

pytest.importorskip("torchao")
from illume.inference.quantize import decoder_layer_bytes, quantize_llm  # noqa: E402


@pytest.fixture(scope="module")
def vocab(golden) -> ImageVocabulary:
    return ImageVocabulary.from_tokenizer(AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer"))


def test_int8_shrinks_the_layers_and_keeps_logits_close(vocab):
    model = tiny_lm(vocab)
    StaticDecoder(model, 1, 8)  # fuse first: quantizing must drop the fused full-precision copies
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    full = decoder_layer_bytes(model)
    quantize_llm(model, "int8")
    quantized = decoder_layer_bytes(model)
    # Linear weights drop from 4 to ~1 byte per value; norms and scales stay small.
    assert quantized < 0.4 * full, (quantized, full)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    error = (logits - reference).norm() / reference.norm()
    assert 0 < error < 0.05
    assert StaticDecoder(model, 1, 8).fused is None  # the decoder calls the quantized modules


def test_quantized_model_generates_valid_images_and_bad_modes_are_refused(vocab):
    model = quantize_llm(tiny_lm(vocab), "int8")
    engine = GenerationEngine(model, vocab)
    grid = ImageGrid.for_resolution(64, 128)
    out = engine.generate(prompts(model, 1, cfg=True), [RowSpec(image=grid)],
                          SamplingConfig.create(1.0, 16, 1.0, cfg_scale=2.0), keys_for([1]), speculative="jacobi")  # fmt: skip
    vocab.parse_image_block(out[0], grid)
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize_llm(model, "int4")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp8"):
            quantize_llm(tiny_lm(vocab), "fp8")
