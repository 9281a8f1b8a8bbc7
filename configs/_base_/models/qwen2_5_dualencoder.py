# ILLUME+ model defaults: Qwen2.5 extended with the ILLUME tokens, the DualViTok dual vision tower
# (semantic ViT + MoVQ pixel encoder) and a MixedProjector of two 2-layer GELU MLPs.
# Keys and values follow the official base config. Relative paths are relative to the repository
# root (upstream wrote them relative to ILLUME/, e.g. '../checkpoints/...': the same folders).

model_args = dict(
    language_model=dict(
        type='IllumeQwen2ForCausalLM',
        from_pretrained=True,
        attn_implementation='sdpa',
        pretrained_model_name_or_path='checkpoints/Qwen2.5-3B-Instruct-with-vision-tokenizer-32k-96k-level2',
    ),
    mm_vision_tower=dict(
        type='DualVisionTower',
        trainable=False,
        min_pixels=256 * 256, max_pixels=256 * 256,
        vq_config='configs/example/dualvitok/dualvitok_anyres_max512.py',
        vq_ckpt='checkpoints/dualvitok/pytorch_model.bin', use_ema=False,
    ),
    mm_projector=dict(
        type='MixedProjector',
        trainable=True,
        projector_cfg1=dict(type='MLPProjector', mlp_depth=2),  # semantic features (3584-d)
        projector_cfg2=dict(type='MLPProjector', mlp_depth=2),  # pixel features (32-d)
    ),
    # ids of <start_of_image> <end_of_image> <end_of_line> <start_of_level0> <end_of_level0>
    # <start_of_level1> <end_of_level1> in the extended Qwen2.5 tokenizer; the model build derives
    # them from the tokenizer (illume.vocab), this list is kept for the official format.
    special_tokens_ids=[151665, 151666, 151667, 151668, 151669, 151670, 151671],
    version='qwen2',  # conversation template
    mm_patch_merge_type='flat',
    mm_use_im_start_end=False, mm_use_im_patch_token=False,
    pretrain_mm_mlp_adapter=None,
    freeze_backbone=False,  # official flag, unused
)
