# A DualViTok small enough for CPU tests and the quick start (about 1.2 M parameters).
#
# The architecture is the golden tiny model (shared/reference/golden/dualvitok_tiny_config.json):
# the same module tree and key names as the full model, only narrower and shallower. Because there
# is no hub name for such a ViT, `semantic_encoder.semantic_encoder` holds the ViT hyper-parameters
# themselves (the fields of transformers' Qwen2VLVisionConfig) instead of 'Emova-ollm/qwen2vit600m'.
# The training and data keys mirror the official configs with toy sizes; the bundled example
# photos serve as the data set.

vq_model = dict(
    type='DualViTok',
    config=dict(
        semantic_encoder=dict(
            semantic_encoder=dict(
                depth=2, embed_dim=32, num_heads=2, mlp_ratio=4, hidden_act='quick_gelu',
                hidden_size=96,  # merger output width, 3584 in the full model
                in_channels=3, patch_size=14, temporal_patch_size=2, spatial_merge_size=2),
            target_mlp='norm', num_blocks=2, embed_dim=64, z_channels=8,
            proj_layer='linear', attn_implementation='sdpa'),
        semantic_quantizer=dict(
            type='SimVQ', codebook_size=256, dim=8, rotation_trick=False, channel_first=True),
        semantic_decoder=dict(
            num_blocks=2, embed_dim=64, z_channels=8, output_channels=96,
            proj_layer='linear_norm', attn_implementation='sdpa'),
        pixel_encoder=dict(
            in_channels=3, out_channels=3, ch=32, ch_mult=[2, 1, 1, 1, 1], num_res_blocks=2,
            attn_resolutions=[4], dropout=0.0, z_channels=8, embed_dim=8, double_z=False,
            codebook_size=768, use_dc_up_down_blocks=True),
        pixel_quantizer=dict(
            type='SimVQ', codebook_size=768, dim=8, rotation_trick=False, channel_first=True),
        pixel_decoder=dict(
            in_channels=3, out_channels=3, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=2,
            attn_resolutions=[4], dropout=0.0, z_channels=16, embed_dim=16, double_z=False,
            codebook_size=768, use_dc_up_down_blocks=True),
        pixel_drop_rate=None,
        pixel_drop_batch_rate=0.1,
        pixel_noise_type='random',
    ),
)

vq_loss = dict(
    type='DualViTokLoss',
    reconstruction_loss='l2', reconstruction_weight=1.0,
    perceptual_weight=0.0,  # LPIPS needs downloaded VGG weights; off for offline tests
    codebook_weight=1.0,
    semantic_reconstruction='cos',
    disc_type='patchgan', disc_loss='hinge', gen_adv_loss='hinge',
    disc_start=2, disc_weight=0.5, disc_adaptive_weight=False,
    disc_dim=8, disc_num_layers=2, disc_in_channels=3,
    image_size=64,
)

data_args = dict(
    global_batch_size=2,
    per_proc_batch_size=2,
    image_size=64,
    image_size_eval=64,
    infer_interpolate=True,
    train=dict(
        resolution=64,
        augment=dict(type='dualvitok_fix_resolution_train'),
        dataset=[dict(dataset='folder', data_path='{{ fileDirname }}/../../assets/examples',
                      shard_data=True, global_sharding=True)],
    ),
    val=dict(
        dataset='folder', data_path='{{ fileDirname }}/../../assets/examples', resolution=64,
        augment=dict(type='dualvitok_fix_resolution_val'),
    ),
    inference=dict(
        dataset='codebook_inference', data_path='', resolution=64,
        augment=dict(type='dualvitok_anyres_inference'),
        batch_size_for_inference=1,
    ),
)

vq_ckpt = None
ema = False
finetune = False
finetune_decoder = False
compile = False
no_local_save = False
aug_fade_steps = 0

lr = 1e-4
epochs = 1
beta1, beta2 = 0.9, 0.95
weight_decay = 5e-2
max_grad_norm = 1.0
gradient_accumulation_steps = 1
mixed_precision = 'none'
global_seed = 0

results_dir = './logdir/dualvitok/dualvitok_tiny/'
sample_dir = f'{results_dir}sample_dir/'
log_every = 1
ckpt_every = 2
num_workers = 0
use_local_data = True
training_with_anyres = False
use_group_image_resolution = False
