# ILLUME+ 3B, stage 3 (the released checkpoint's recipe): everything trainable except the ViT's
# first 16 blocks and the pixel encoder's down path; understanding, text-to-image and editing data.
# The released model is loaded for inference from `training_args.output_dir`.
# Relative paths are relative to the repository root.

_base_ = ['../../_base_/models/qwen2_5_dualencoder.py', '../../_base_/training/default.py']

_meta_configs = ['configs/data_configs/train_data_examples/examples_meta_data_config.json']
_codebook_dir = 'jsonl_after_tokenizer/dualvitok/fixed_256/'

data_args = dict(
    meta_data_info_list=[
        dict(meta_configs=_meta_configs, dataset_dtype='DefaultDataset',
             data_infos=dict(examples_understanding=-1), image_aspect_ratio='anyres_dualvitok'),
        dict(meta_configs=_meta_configs, dataset_dtype='Text2ImageDataset', codebook_dir=_codebook_dir,
             data_infos=dict(examples_generation=-1), image_aspect_ratio='anyres_dualvitok_fix_anchors'),
        dict(meta_configs=_meta_configs, dataset_dtype='SingleTurnEditDataset', codebook_dir=_codebook_dir,
             data_infos=dict(examples_editing=-1), image_aspect_ratio='anyres_dualvitok_fix_anchors'),
    ],
    base_resolution=256,
    cfg_text_dropout_probability=0.1,
    image_aspect_ratio='anyres_dualvitok',  # understanding inputs (also at inference)
    image_aspect_ratio_generation='anyres_dualvitok_fix_anchors',  # generation / editing inputs
    is_multimodal=True,
)

model_args = dict(
    language_model=dict(
        pretrained_model_name_or_path='checkpoints/Qwen2.5-3B-Instruct-with-vision-tokenizer-32k-96k-level2',
        trainable=True,
    ),
    mm_vision_tower=dict(
        min_pixels=32 * 32,
        max_pixels=768 * 768,
        trainable=True,
        unfreeze_mm_vision_tower=True,
        tune_vit_from_layer=16,
    ),
    mm_projector=dict(trainable=True),
    # embedding rows: both the new image-token rows and the original text rows learn
    unfreeze_text_embedding=True, unfreeze_vision_embedding=True,
    text_token_num=151665,  # len(Qwen2.5 tokenizer) before the ILLUME tokens
    vision_tokenizer_levels=2, tune_mm_mlp_adapter=True,
)

training_args = dict(
    output_dir='logdir/illume_plus_3b/illume_plus-qwen2_5-3b_stage3',
    deepspeed='ILLUME/scripts/zero2.json',
    bf16=True,
    tf32=True,
    num_train_epochs=1,
    per_device_train_batch_size=1,
    gradient_accumulation_steps=1,
    learning_rate=2e-5,
    mm_vision_tower_lr=2e-6,
    weight_decay=0.0,
    warmup_ratio=0.03,
    lr_scheduler_type='cosine',
    adam_beta2=0.95,
    model_max_length=4096,
    gradient_checkpointing=True,
    # Throughput switches (benchmarks/train_throughput.py measures them against the plain recipe):
    gradient_checkpointing_kwargs=dict(every_n_layers=1),  # k > 1: checkpoint every k-th layer only
    optim='adamw_torch_fused',
    cross_entropy_backend='auto',  # no full-vocabulary logits (liger on CUDA when installed, else chunked)
    packing=False,  # True with per_device_train_batch_size > 1: one packed row per micro-batch
    save_strategy='steps',
    save_steps=2000,
    save_total_limit=1,
    save_on_each_node=True,
    logging_steps=1,
    report_to='tensorboard',
    seed=423,
    dataloader_num_workers=1,
    group_by_modality_length=False,
)
