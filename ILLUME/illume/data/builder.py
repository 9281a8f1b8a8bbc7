"""Build the training mixture from the official `data_args` layout (SPEC-mllm C8).

`data_args.meta_data_info_list` is a list of groups::

    dict(meta_configs=[json, ...], dataset_dtype="Text2ImageDataset",
         codebook_dir="jsonl_after_tokenizer/dualvitok/fixed_anchors/",
         data_infos=dict(examples_generation=-1),   # sample_num <= 0: all records
         image_aspect_ratio="anyres_dualvitok_fix_anchors",
         cfg_text_dropout_probability=0.1)          # optional, else data_args' value
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from illume.data.conversation import ChatTemplate
from illume.data.datasets import DATASET_TYPES, MixedDataset
from illume.data.errors import RecordErrorPolicy
from illume.data.images import ImagePreprocessor
from illume.data.records import DatasetMeta, RecordSource, annotation_files, load_meta_data_config

__all__ = ["build_training_dataset"]

_GROUP_KEYS = {
    "meta_configs",
    "dataset_dtype",
    "codebook_dir",
    "data_infos",
    "image_aspect_ratio",
    "cfg_text_dropout_probability",
}


def _resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def build_training_dataset(
    data_args: Mapping[str, Any],
    tokenizer: Any,
    template: ChatTemplate,
    *,
    min_pixels: int,
    max_pixels: int,
    model_max_length: int,
    base_dir: Path,
    error_policy: RecordErrorPolicy | None = None,
    seed: int = 0,
) -> MixedDataset:
    """All datasets named in `data_args.meta_data_info_list`, in config order.

    Relative `meta_configs` paths are resolved against `base_dir` (the repository root).
    """
    groups = data_args.get("meta_data_info_list")
    if not groups:
        raise ValueError("data_args.meta_data_info_list is empty: no training data configured")
    default_dropout = float(data_args.get("cfg_text_dropout_probability", 0.0))
    base_resolution = int(data_args.get("base_resolution", 256))
    datasets = []
    for g, group in enumerate(groups):
        where = f"data_args.meta_data_info_list[{g}]"
        unknown = set(group) - _GROUP_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed {sorted(_GROUP_KEYS)}")
        kind = group.get("dataset_dtype", "DefaultDataset")
        if kind not in DATASET_TYPES:
            raise ValueError(f"{where}: dataset_dtype {kind!r} is not one of {sorted(DATASET_TYPES)}")
        metas: dict[str, DatasetMeta] = {}
        for meta_path in group.get("meta_configs", []):
            metas.update(load_meta_data_config(_resolve(meta_path, base_dir)))
        preprocessor = ImagePreprocessor(
            group.get("image_aspect_ratio", data_args.get("image_aspect_ratio", "anyres_dualvitok")),
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            base_resolution=base_resolution,
        )
        for name, sample_num in dict(group.get("data_infos", {})).items():
            if name not in metas:
                raise ValueError(f"{where}: dataset {name!r} is in no meta config; known: {sorted(metas)}")
            meta = metas[name]
            files = annotation_files(meta.records_dir(group.get("codebook_dir")))
            datasets.append(
                DATASET_TYPES[kind](
                    name,
                    RecordSource(files, int(sample_num)),
                    meta.image_dir,
                    tokenizer,
                    template,
                    preprocessor,
                    model_max_length,
                    cfg_text_dropout_probability=float(
                        group.get("cfg_text_dropout_probability", default_dropout)
                    ),
                    error_policy=error_policy,
                    seed=seed,
                )
            )
    return MixedDataset(datasets)
