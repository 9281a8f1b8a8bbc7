# The quick start's DualViTok, trained from scratch on the bundled photos in a few CPU minutes.
#
# `illume quickstart` fills in the data folder, the output folder, the resolution and `max_steps`
# from its own settings (configs/quickstart/quickstart.py). By hand, after
# `python scripts/make_example_data.py outputs/quickstart/data`:
#   python -m vision_tokenizer.train configs/quickstart/dualvitok_quickstart.py
#
# The module tree and key names are those of the released model; the sizes are the tiny test
# model's (configs/tiny/dualvitok_tiny.py, codebooks 256 / 768) except for the pixel branch, which
# is 32 channels wide at every level with one residual block: at full resolution the convolutions
# dominate CPU time, and this halves it. The ViT of the semantic branch is randomly initialised
# and frozen (no pretrained weights are available offline), so the semantic codes learn to
# represent random-ViT features of the photos.

vq_model = dict(
    type='DualViTok',
    config=dict(
        semantic_encoder=dict(
            semantic_encoder=dict(
                depth=2, embed_dim=32, num_heads=2, mlp_ratio=4, hidden_act='quick_gelu',
                hidden_size=96, in_channels=3, patch_size=14, temporal_patch_size=2, spatial_merge_size=2),
            target_mlp='norm', num_blocks=2, embed_dim=64, z_channels=8,
            proj_layer='linear', attn_implementation='sdpa'),
        semantic_quantizer=dict(
            type='SimVQ', codebook_size=256, dim=8, rotation_trick=False, channel_first=True),
        semantic_decoder=dict(
            num_blocks=2, embed_dim=64, z_channels=8, output_channels=96,
            proj_layer='linear_norm', attn_implementation='sdpa'),
        pixel_encoder=dict(
            in_channels=3, out_channels=3, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
            attn_resolutions=[], dropout=0.0, z_channels=8, embed_dim=8, double_z=False,
            codebook_size=768, use_dc_up_down_blocks=True),
        pixel_quantizer=dict(
            type='SimVQ', codebook_size=768, dim=8, rotation_trick=False, channel_first=True),
        pixel_decoder=dict(
            in_channels=3, out_channels=3, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
            attn_resolutions=[], dropout=0.0, z_channels=16, embed_dim=16, double_z=False,
            codebook_size=768, use_dc_up_down_blocks=True),
        pixel_drop_rate=None,
        pixel_drop_batch_rate=0.1,
        pixel_noise_type='random',
    ),
)

# No adversarial term (disc_start beyond any run length): in a few hundred steps a GAN only costs
# reconstruction quality. No LPIPS: it needs VGG weights that cannot be downloaded here.
vq_loss = dict(
    type='DualViTokLoss',
    reconstruction_loss='l2', reconstruction_weight=1.0,
    perceptual_weight=0.0,
    codebook_weight=1.0,
    semantic_reconstruction='cos',
    disc_type='patchgan', disc_loss='hinge', gen_adv_loss='hinge',
    disc_start=10**9, disc_weight=0.0, disc_adaptive_weight=False,
    disc_dim=8, disc_num_layers=2, disc_in_channels=3,
    image_size=64,
)

_images = 'outputs/quickstart/data/images'
data_args = dict(
    global_batch_size=4,
    per_proc_batch_size=4,
    image_size=64,
    image_size_eval=64,
    infer_interpolate=True,
    train=dict(
        resolution=64,
        augment=dict(type='dualvitok_fix_resolution_train'),
        dataset=[dict(dataset='folder', data_path=_images, shard_data=True, global_sharding=True)],
    ),
    val=dict(
        dataset='folder', data_path=_images, resolution=64,
        augment=dict(type='dualvitok_fix_resolution_val'),
    ),
    inference=dict(
        dataset='codebook_inference', data_path='', resolution=64,
        augment=dict(type='dualvitok_anyres_inference'),
        batch_size_for_inference=8,
    ),
)

vq_ckpt = None
finetune = False
finetune_decoder = False
ema = False
compile = False
results_dir = 'outputs/quickstart/tokenizer/'
sample_dir = None

# A high learning rate with cosine decay overfits a dozen photos quickly; the run length is
# `max_steps` (epochs only bounds it from above).
epochs = 10**6
max_steps = 400
lr = 2e-3
warmup = 0.02
lr_decay_style = 'cosine'
lr_decay_ratio = 0.05
weight_decay = 0.0
beta1, beta2 = 0.9, 0.95
max_grad_norm = 1.0
gradient_accumulation_steps = 1
mixed_precision = 'none'
global_seed = 0
num_workers = 0
log_every = 10
ckpt_every = 100
sample_every = 100
ckpt_keep = 1
training_with_anyres = False
use_group_image_resolution = False
