# DualViTok trained at any resolution up to 512x512 pixels: the configuration of the released
# tokenizer checkpoint. Keys and values follow the official ILLUME+ config of the same name, so the
# released `pytorch_model.bin` loads into the model this file describes.
#
# Read it with `vision_tokenizer.utils.config.load_config(path, ['--a.b=value', ...])`.
# Paths below are relative to the directory training is launched from, as upstream.

vq_model = dict(
    type='DualViTok',
    config=dict(
        # Semantic branch: frozen Qwen2-VL ViT (600M) + 4 trainable blocks -> 32-d codes.
        semantic_encoder=dict(
            semantic_encoder='Emova-ollm/qwen2vit600m',  # resolved to a built-in config, never downloaded
            target_mlp='norm', num_blocks=4, embed_dim=1280, z_channels=32,
            proj_layer='linear', attn_implementation='sdpa'),
        semantic_quantizer=dict(
            type='SimVQ', codebook_size=32768, dim=32, rotation_trick=False, channel_first=True),
        semantic_decoder=dict(
            num_blocks=4, embed_dim=1280, z_channels=32, output_channels=3584,
            proj_layer='linear_norm', attn_implementation='sdpa'),
        # Pixel branch: MoVQ convolutional encoder/decoder with DC down/up blocks, stride 16.
        pixel_encoder=dict(
            in_channels=3, out_channels=3, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
            attn_resolutions=[4], dropout=0.0, z_channels=32, embed_dim=32, double_z=False,
            codebook_size=3 * 32768, use_dc_up_down_blocks=True),
        pixel_quantizer=dict(
            type='SimVQ', codebook_size=3 * 32768, dim=32, rotation_trick=False, channel_first=True),
        pixel_decoder=dict(
            in_channels=3, out_channels=3, ch=384, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
            attn_resolutions=[4], dropout=0.0, z_channels=64, embed_dim=64, double_z=False,
            codebook_size=3 * 32768, use_dc_up_down_blocks=True),
        # Training-time code dropout on the pixel branch (off for this config).
        pixel_drop_rate=None,
        pixel_drop_batch_rate=0.1,
        pixel_noise_type='random',
    ),
)

vq_loss = dict(
    type='DualViTokLoss',
    reconstruction_loss='l2', reconstruction_weight=1.0,
    perceptual_weight=1.0, codebook_weight=1.0,
    semantic_reconstruction='cos',
    disc_type='patchgan', disc_loss='hinge', gen_adv_loss='hinge',
    disc_start=20000, disc_weight=0.5, disc_adaptive_weight=False,
    disc_dim=64, disc_num_layers=3, disc_in_channels=3,
    image_size=512,  # only read by the (unused) stylegan discriminator
)

data_args = dict(
    global_batch_size=256,
    per_proc_batch_size=2,
    image_size=512,
    image_size_eval=256,
    infer_interpolate=True,
    train=dict(
        resolution=512,
        augment=dict(type='dualvitok_anyres_resolution_train', min_pixels=32 * 32, max_pixels=512 * 512),
        dataset=[
            # ImageNet train as a plain folder; `json_file` lists every image size for resolution
            # bucketing (write it with vision_tokenizer/scripts/read_folder_image_sizes.py).
            # Append more dict(dataset='folder', data_path=..., json_file=..., ...) entries to mix data.
            dict(dataset='folder', data_path='./data/imagenet_train/',
                 json_file='./data/json_files/imagenet_train.json',
                 shard_data=True, global_sharding=True),
        ],
    ),
    val=dict(
        dataset='imagenet', data_path='./data/imagenet_val/', resolution=256,
        augment=dict(type='dualvitok_fix_resolution_val'),
    ),
    # Used by codebook inference (MLLM data preparation).
    inference=dict(
        dataset='codebook_inference', data_path='', resolution=256,
        augment=dict(type='dualvitok_anyres_inference'),
        batch_size_for_inference=1,
    ),
)

# ---- run options ----
vq_ckpt = None               # resume / initialise from this checkpoint
ema = False                  # keep an EMA copy of the weights (stored under "ema")
finetune = False
finetune_decoder = False
compile = False              # torch.compile the model
no_local_save = False
aug_fade_steps = 0

# ---- optimisation ----
lr = 1e-4
epochs = 21
beta1, beta2 = 0.9, 0.95
weight_decay = 5e-2          # kept for compatibility; the official Adam ignores it
max_grad_norm = 1.0
gradient_accumulation_steps = 1
mixed_precision = 'bf16'     # 'none' | 'fp16' | 'bf16'
global_seed = 3

# ---- outputs, data loading and bookkeeping ----
results_dir = './logdir/dualvitok/dualvitok_anyres_max512/'
sample_dir = f'{results_dir}sample_dir/'
log_every = 100
ckpt_every = 2000
num_workers = 8
use_local_data = True
training_with_anyres = True          # collate images of one bucket to a common size
use_group_image_resolution = True    # sample batches from images of similar size
