# The quick start's MLLM training: a tiny randomly initialised Qwen2 (extended with the image
# tokens of configs/quickstart/dualvitok_quickstart.py) learns understanding, text-to-image and
# editing on the bundled photos. The goal is to overfit them: a caption from the training set must
# bring back its photo.
#
# `illume quickstart` writes a copy of this file with its own paths and sizes into the output
# folder and launches it with torchrun. By hand, after the earlier quick-start stages:
#   torchrun --nproc_per_node 1 ILLUME/illume/train/train.py configs/quickstart/illume_quickstart.py
# Relative paths are relative to the repository root.

_meta = ['outputs/quickstart/data/quickstart_meta_data_config.json']
_codebook_dir = 'jsonl_after_tokenizer/dualvitok/fixed_64/'
_pixels = 64 * 64  # the tower sees every image at the quick-start resolution

model_args = dict(
    version='qwen2',
    mm_use_im_start_end=False,
    mm_use_im_patch_token=False,
    mm_patch_merge_type='flat',
    vision_tokenizer_levels=2,
    # Every row starts random (there is no pretrained LLM), so text and image rows all learn.
    unfreeze_vision_embedding=True,
    unfreeze_text_embedding=True,
    language_model=dict(
        type='IllumeQwen2ForCausalLM',
        pretrained_model_name_or_path='outputs/quickstart/llm/extended',
        attn_implementation='sdpa',
        from_pretrained=True,
        trainable=True,
    ),
    mm_vision_tower=dict(
        type='DualVisionTower',
        vq_config='configs/quickstart/dualvitok_quickstart.py',
        vq_ckpt='outputs/quickstart/tokenizer/dualvitok',
        min_pixels=32 * 32,
        max_pixels=_pixels,
        use_ema=False,
        trainable=False,
    ),
    mm_projector=dict(
        type='MixedProjector',
        projector_cfg1=dict(type='MLPProjector', mlp_depth=2),
        projector_cfg2=dict(type='MLPProjector', mlp_depth=2),
        trainable=True,
    ),
)

data_args = dict(
    meta_data_info_list=[
        dict(meta_configs=_meta, dataset_dtype='DefaultDataset',
             data_infos=dict(quickstart_understanding=-1), image_aspect_ratio='anyres_dualvitok'),
        dict(meta_configs=_meta, dataset_dtype='Text2ImageDataset', codebook_dir=_codebook_dir,
             data_infos=dict(quickstart_generation=-1), image_aspect_ratio='anyres_dualvitok_fix_anchors'),
        dict(meta_configs=_meta, dataset_dtype='SingleTurnEditDataset', codebook_dir=_codebook_dir,
             data_infos=dict(quickstart_editing=-1), image_aspect_ratio='anyres_dualvitok_fix_anchors'),
    ],
    base_resolution=64,
    # No CFG dropout: memorising the set matters more here than guidance (sample with cfg_scale=1).
    cfg_text_dropout_probability=0.0,
    image_aspect_ratio='anyres_dualvitok',
    image_aspect_ratio_generation='anyres_dualvitok_fix_anchors',
    is_multimodal=True,
    record_error_policy='raise',
)

training_args = dict(
    output_dir='outputs/quickstart/mllm',
    max_steps=300,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=1,
    learning_rate=2e-3,
    mm_projector_lr=2e-3,
    vision_token_lr=2e-3,
    weight_decay=0.0,
    warmup_ratio=0.03,
    lr_scheduler_type='cosine',
    adam_beta2=0.95,
    model_max_length=512,
    gradient_checkpointing=False,
    bf16=False,
    save_strategy='steps',
    save_steps=100,
    save_total_limit=1,
    logging_steps=5,
    report_to='none',
    seed=0,
    dataloader_num_workers=0,
    disable_tqdm=False,
    group_by_modality_length=False,
    use_cpu=True,
)
