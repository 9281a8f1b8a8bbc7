"""The checkpoint's generation_config.json: merged like HF `generate`, penalty identical to transformers'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from illume.inference.pipeline import IllumePipeline
from illume.inference.sampling import penalize_repeats
from illume.model import IllumeQwen2Config
from illume.model.generation_defaults import HF_DEFAULTS, GenerationDefaults
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from tests.illume import tiny_models

tiny_origin_dir = tiny_models.tiny_origin_dir
QWEN25_INSTRUCT = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05}


def test_penalty_equals_transformers_processor() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 40, generator=generator)
    history = torch.randint(0, 40, (3, 6), generator=generator)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, scores.clone())
    seen = torch.zeros(3, 40, dtype=torch.bool).scatter_(1, history, True)
    torch.testing.assert_close(penalize_repeats(scores, seen, 1.3), expected, rtol=0, atol=0)
    # on a slice of the vocabulary (the engine's span) it is the same slice
    torch.testing.assert_close(penalize_repeats(scores[:, 10:30], seen[:, 10:30], 1.3), expected[:, 10:30])


def test_caller_values_win_then_the_file_then_transformers_defaults(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps({**QWEN25_INSTRUCT, "bos_token_id": 1}))
    defaults = GenerationDefaults.from_folder(tmp_path)
    assert defaults.resolve(do_sample=None, temperature=None, top_k=None, top_p=None, repetition_penalty=None) == QWEN25_INSTRUCT
    assert defaults.resolve(do_sample=False, temperature=1.0, top_k=None) == {"do_sample": False, "temperature": 1.0, "top_k": 20}
    (tmp_path / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.05}))
    partial = GenerationDefaults.from_folder(tmp_path).resolve(top_k=None, repetition_penalty=None)
    assert partial == {"top_k": HF_DEFAULTS["top_k"], "repetition_penalty": 1.05}
    assert GenerationDefaults.from_folder(tmp_path, enabled=False) == GenerationDefaults()
    with pytest.raises(TypeError, match="min_length"):
        defaults.resolve(min_length=None)


def _qwen2_twin(folder: Path) -> Qwen2ForCausalLM:
    """A plain transformers Qwen2 with the tiny MLLM's decoder settings and language-model weights."""
    values = IllumeQwen2Config.from_pretrained(folder).to_dict()
    for key in ("model_type", "architectures", "mm_vision_tower", "mm_projector"):
        values.pop(key)
    model = Qwen2ForCausalLM(Qwen2Config.from_dict(values)).eval()
    weights = load_file(folder / "model.safetensors")
    state = {k: v for k, v in weights.items() if not k.startswith(("model.vision_tower.", "model.mm_projector."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])  # tied to the embeddings
    return model


def test_greedy_answer_with_the_file_penalty_equals_qwen2_generate(tiny_origin_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_origin_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.5}))
    pipe = IllumePipeline.from_pretrained(folder, device="cpu", dtype="fp32")
    plain = IllumePipeline.from_pretrained(folder, device="cpu", dtype="fp32", use_generation_config=False)
    question, steps = "Who are you?", 24
    answer = pipe.understand(None, question, max_new_tokens=steps)[0]
    without = plain.understand(None, question, max_new_tokens=steps)[0]

    twin = _qwen2_twin(folder)
    ids = torch.tensor([pipe._tokenize(pipe.template.generation_prompt(question))])
    vocab = pipe.vocab
    # The engine never samples ILLUME tokens in a text answer; transformers is told the same.
    banned = list(range(vocab.start_of_image, twin.config.vocab_size))
    common = dict(max_new_tokens=steps, do_sample=False, eos_token_id=[vocab.end_of_text, vocab.pad],
                  pad_token_id=vocab.pad, suppress_tokens=banned)  # fmt: skip
    with torch.no_grad():
        embeds = twin.get_input_embeddings()(ids)  # as the official code calls generate: embeddings in
        penalized = twin.generate(inputs_embeds=embeds, repetition_penalty=1.5, **common)[0]
        free = twin.generate(inputs_embeds=embeds, **common)[0]

    def text(out: torch.Tensor) -> str:
        return pipe.tokenizer.decode([t for t in out.tolist() if t not in (vocab.end_of_text, vocab.pad)], skip_special_tokens=True)

    assert answer == text(penalized)
    assert without == text(free)
    assert answer != without  # the penalty really changed this greedy answer
