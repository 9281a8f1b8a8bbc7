# A tiny ILLUME+ MLLM for tests and the quick start: the architecture of the golden tiny model
# (shared/reference/golden/mllm_tiny_config.json) with the tiny DualViTok as its vision tower.
# `llm_config` holds the Qwen2 sizes (the official configs take them from the LLM checkpoint);
# codebooks are 128x smaller than the released 32768 / 98304, as in configs/tiny/dualvitok_tiny.py.
# Relative paths are relative to the repository root.

semantic_codebook_size = 256
pixel_codebook_size = 768

llm_config = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    # 342 base tokens padded to 384 rows (as Qwen pads 151665 to 151936) + 1063 ILLUME tokens
    vocab_size=384 + 1063,
)

model_args = dict(
    version='qwen2',
    mm_use_im_start_end=False,
    mm_use_im_patch_token=False,
    mm_patch_merge_type='flat',
    mm_vision_tower=dict(
        type='DualVisionTower',
        vq_config='configs/tiny/dualvitok_tiny.py',
        vq_ckpt=None,
        min_pixels=32 * 32,
        max_pixels=256 * 256,
        use_ema=False,
    ),
    mm_projector=dict(
        type='MixedProjector',
        projector_cfg1=dict(type='MLPProjector', mlp_depth=2),
        projector_cfg2=dict(type='MLPProjector', mlp_depth=2),
    ),
)
