# A small ILLUME+ debug run on the example data: frozen vision tower at 256x256, projector, LLM and
# all embedding rows trainable; ZeRO-3, fp16, 10 epochs. Relative paths are relative to the
# repository root.

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
    image_aspect_ratio='anyres_dualvitok',
    image_aspect_ratio_generation='anyres_dualvitok_fix_anchors',
    is_multimodal=True,
)

model_args = dict(
    language_model=dict(
        pretrained_model_name_or_path='checkpoints/Qwen2.5-3B-Instruct-with-vision-tokenizer-32k-96k-level2',
        trainable=True,
    ),
    mm_vision_tower=dict(min_pixels=256 * 256, max_pixels=256 * 256, trainable=False),
    mm_projector=dict(trainable=True),
    # embedding rows: both the new image-token rows and the original text rows learn
    unfreeze_text_embedding=True, unfreeze_vision_embedding=True,
    text_token_num=151665,  # len(Qwen2.5 tokenizer) before the ILLUME tokens
    vision_tokenizer_levels=2, tune_mm_mlp_adapter=True,
)

training_args = dict(
    output_dir='logdir/illume_debug/illume_plus-qwen2_5-3b_debug',
    deepspeed='ILLUME/scripts/zero3.json',
    fp16=True,
    num_train_epochs=10,
    per_device_train_batch_size=1,
    gradient_accumulation_steps=1,
    learning_rate=2e-5,
    weight_decay=0.0,
    warmup_ratio=0.03,
    lr_scheduler_type='cosine',
    adam_beta2=0.95,
    model_max_length=2048,
    gradient_checkpointing=True,
    save_strategy='steps',
    save_steps=2000,
    save_total_limit=1,
    logging_steps=1,
    report_to='tensorboard',
    seed=423,
    dataloader_num_workers=1,
    group_by_modality_length=False,
)
