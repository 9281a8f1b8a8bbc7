# A tiny ILLUME+ training run for CPU tests and the quick start: all three stages' machinery
# (tower tuned from ViT layer 1, projector, LLM, both embedding flags) on the bundled example data
# (understanding, pure text, text-to-image, editing) in about a minute on 2 cores.
#
# The LLM folder is an extended tiny Qwen2 checkpoint (config + tokenizer with the ILLUME tokens,
# codebooks 256 / 768 like configs/tiny/dualvitok_tiny.py); pass it with
#   --model_args.language_model.pretrained_model_name_or_path=DIR
# Run:  torchrun --nproc_per_node 2 ILLUME/illume/train/train.py configs/tiny/illume_debug_tiny.py \
#         --model_args.language_model.pretrained_model_name_or_path=DIR --training_args.output_dir=OUT

_meta = ['configs/data_configs/train_data_examples/examples_meta_data_config.json']
_codebook_dir = 'jsonl_after_tokenizer/dualvitok/fixed_256/'

model_args = dict(
    version='qwen2',
    mm_use_im_start_end=False,
    mm_use_im_patch_token=False,
    mm_patch_merge_type='flat',
    vision_tokenizer_levels=2,
    unfreeze_vision_embedding=True,
    unfreeze_text_embedding=True,
    language_model=dict(
        type='IllumeQwen2ForCausalLM',
        pretrained_model_name_or_path='checkpoints/illume_tiny_llm',
        attn_implementation='sdpa',
        from_pretrained=True,
        trainable=True,
    ),
    mm_vision_tower=dict(
        type='DualVisionTower',
        vq_config='configs/tiny/dualvitok_tiny.py',
        vq_ckpt=None,
        min_pixels=32 * 32,
        max_pixels=256 * 256,
        use_ema=False,
        trainable=True,
        tune_vit_from_layer=1,
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
             data_infos=dict(examples_understanding=-1, examples_text=-1),
             image_aspect_ratio='anyres_dualvitok'),
        dict(meta_configs=_meta, dataset_dtype='Text2ImageDataset', codebook_dir=_codebook_dir,
             data_infos=dict(examples_generation=-1), image_aspect_ratio='anyres_dualvitok_fix_anchors'),
        dict(meta_configs=_meta, dataset_dtype='SingleTurnEditDataset', codebook_dir=_codebook_dir,
             data_infos=dict(examples_editing=-1), image_aspect_ratio='anyres_dualvitok_fix_anchors'),
    ],
    base_resolution=256,
    cfg_text_dropout_probability=0.0,
    image_aspect_ratio='anyres_dualvitok',
    image_aspect_ratio_generation='anyres_dualvitok_fix_anchors',
    is_multimodal=True,
    record_error_policy='raise',
)

training_args = dict(
    output_dir='logdir/illume_debug_tiny',
    num_train_epochs=8,
    max_steps=-1,  # > 0 overrides num_train_epochs
    per_device_train_batch_size=1,
    gradient_accumulation_steps=1,
    learning_rate=2e-3,
    mm_projector_lr=2e-3,
    mm_vision_tower_lr=2e-4,
    vision_token_lr=2e-3,
    weight_decay=0.0,
    warmup_ratio=0.0,
    lr_scheduler_type='constant',
    adam_beta2=0.95,
    model_max_length=2048,
    gradient_checkpointing=True,
    gradient_checkpointing_kwargs=dict(every_n_layers=1),  # k: only every k-th decoder layer
    optim='adamw_torch',  # 'adamw_torch_fused': one fused kernel per step (CUDA and CPU)
    bf16=False,
    save_strategy='steps',
    save_steps=1000,
    save_total_limit=2,
    logging_steps=1,
    report_to='none',
    seed=423,
    dataloader_num_workers=0,
    disable_tqdm=True,
    group_by_modality_length=False,
    use_cpu=True,
    deepspeed=None,  # e.g. 'ILLUME/scripts/zero2.json'
    # Throughput switches (illume.train.objective): loss without full-vocabulary logits, packing.
    cross_entropy_backend='auto',  # 'auto' | 'chunked' | 'liger' | 'plain'
    cross_entropy_chunk_size=1024,
    packing=False,  # True: each micro-batch's samples in one row, positions restarting per sample
    # LoRA through peft (illume.train.lora); the other stage flags pick what trains in full.
    lora_enable=False,
    lora_r=64,
    lora_alpha=16,
    lora_dropout=0.05,
    lora_bias='none',
)
