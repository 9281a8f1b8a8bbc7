"""The lmms-eval model `illume`: answers benchmark requests through `IllumePipeline.understand`.

Requests are grouped by their generation settings and sent to the pipeline in batches of
`batch_size` (the official plugin asserted a batch size of 1). Prompting and decoding are the
pipeline's; this class only maps lmms-eval's request tuples and generation kwargs onto it.
A task's context is question text: the pipeline puts the request's images in front of it, and
control strings in it (`<image>`, `<|im_end|>`, ...) stay plain text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from vision_tokenizer.runtime.distributed import init_distributed

__all__ = ["IllumeLMMs", "IGNORED_OFFICIAL_ARGS"]

logger = logging.getLogger(__name__)

# Model args of the official plugin that have no meaning here (the pipeline decides them);
# accepted so existing command lines keep working, and reported once.
IGNORED_OFFICIAL_ARGS = frozenset({
    "truncation", "attn_implementation", "device_map", "conv_template", "use_cache", "tie_weights",
    "truncate_context", "customized_config", "log_step", "inference_max_num_slices", "inference_max_length",
    "inference_max_resolution", "inference_force_slice", "inference_force_up_scale_sclices",
})  # fmt: skip
_SUPPORTED_GEN_KWARGS = frozenset(
    {"until", "max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "num_beams"}
)


def _truncate(text: str, stops: Sequence[str]) -> str:
    """Cut the answer at the first stop string, as lmms-eval's `until` asks."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


class IllumeLMMs(lmms):
    """`--model illume --model_args pretrained=<MLLM folder>[,dualvitok=...,batch_size=...]`.

    Args:
        pretrained: ILLUME+ MLLM checkpoint folder (origin or HF format).
        dualvitok / dualvitok_config: optional tokenizer checkpoint (understanding does not need it).
        device, dtype: as `IllumePipeline.from_pretrained` (default: this rank's GPU, bf16; CPU fp32).
        batch_size: requests per pipeline call.
        max_new_tokens: default when a task gives none (official: 1024).
        seed: base seed for sampled generation (greedy tasks do not use it).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        dualvitok: str | None = None,
        dualvitok_config: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 1024,
        seed: int = 42,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - IGNORED_OFFICIAL_ARGS)
        if unknown:
            raise TypeError(f"unknown model_args for 'illume': {unknown}")
        if kwargs:
            logger.warning("ignoring official ILLUME plugin args that do not apply here: %s", sorted(kwargs))
        from illume.inference.pipeline import IllumePipeline

        # lmms-eval's launcher (accelerate) owns the process group: only read the ranks here.
        ctx = init_distributed(device, join=False)
        self._rank, self._world_size = ctx.rank, ctx.world_size
        device = str(ctx.device)
        self.pipe = IllumePipeline.from_pretrained(
            pretrained, dualvitok=dualvitok, dualvitok_config=dualvitok_config, device=device, dtype=dtype
        )
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)

    # ------------------------------------------------------------------ generation
    def _settings(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Pipeline keyword arguments and stop strings from a task's generation kwargs."""
        unknown = sorted(set(gen_kwargs) - _SUPPORTED_GEN_KWARGS)
        if unknown:
            raise ValueError(f"generation kwargs not supported by the illume model: {unknown}")
        if int(gen_kwargs.get("num_beams", 1) or 1) != 1:
            raise ValueError("beam search is not supported: set num_beams to 1")
        until = gen_kwargs.get("until") or []
        stops = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = bool(gen_kwargs.get("do_sample", temperature > 0)) and temperature > 0
        top_p = gen_kwargs.get("top_p")
        settings = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            "do_sample": sample,
            "temperature": temperature if sample else 1.0,
            "top_p": float(top_p) if top_p is not None and sample else 1.0,
            "top_k": int(gen_kwargs.get("top_k") or 0) if sample else 0,
        }
        return settings, stops

    def _visuals(self, request: Instance) -> list[Image.Image]:
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = visuals or []
        for item in visuals:
            if not isinstance(item, Image.Image):
                raise TypeError(
                    f"task {task!r} doc {doc_id}: the illume model takes images only, got {type(item).__name__}"
                )
        return [item.convert("RGB") for item in visuals]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            settings, stops = self._settings(dict(requests[members[0]].args[1]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                contexts = [requests[i].args[0] for i in chunk]
                images = [self._visuals(requests[i]) for i in chunk]
                texts = self.pipe.understand(
                    images, contexts, seed=[self.seed + i for i in chunk], **settings
                )
                for i, context, text in zip(chunk, contexts, texts):
                    answers[i] = _truncate(text, stops)
                    self.cache_hook.add_partial("generate_until", (context, requests[i].args[1]), answers[i])
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "the illume lmms-eval model implements generate_until only; choose a generate_until task"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "multi-round generation is not implemented for the illume model (nor officially)"
        )
