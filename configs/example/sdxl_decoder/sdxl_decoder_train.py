# Training the SDXL diffusion decoder on DualViTok codes, with the recipe of the ILLUME+ paper:
# UNet initialised from SDXL base (conv_in widened 4 -> 68, new channels zero), learning rate 2e-5,
# global batch 128, multi-ratio training at 2x the tokenizer resolution (tokenizer side 256..1024
# -> the 12 decoder sizes, 512x512 up to 2048x512). Steps, warm-up, EMA and dropout are not given
# in the paper; the values below are ours.
#
#   torchrun --nproc_per_node 8 vision_tokenizer/scripts/train_sdxl_decoder.py \
#       configs/example/sdxl_decoder/sdxl_decoder_train.py --data.root=/data/images
#
# Paths are read as given (relative ones from the directory you launch in).

model = dict(
    sdxl_path='checkpoints/stable-diffusion-xl-base-1.0',  # diffusers SDXL folder (unet/ vae/ scheduler/)
    decoder_path=None,  # or a decoder folder (e.g. checkpoints/dualvitok-sdxl-decoder) to fine-tune
    dualvitok_checkpoint='checkpoints/dualvitok/pytorch_model.bin',
    dualvitok_config='configs/example/dualvitok/dualvitok_anyres_max512.py',
    dualvitok_use_ema=False,
    dualvitok_dtype='float32',  # the frozen tokenizer; fp32 keeps its codes identical to inference
    vae_dtype='float32',  # SDXL's VAE overflows in fp16
)

data = dict(
    root=None,  # image folder, searched recursively (required)
    sizes_file=None,  # optional JSON from vision_tokenizer/scripts/read_folder_image_sizes.py
    sizes=[  # decoder output sizes (W, H) used as buckets: all 12 the UNet knows
        (1024, 1024), (768, 1024), (1024, 768), (512, 2048), (2048, 512), (640, 1920),
        (1920, 640), (768, 1536), (1536, 768), (768, 1152), (1152, 768), (512, 512),
    ],
    random_flip=True,
    num_workers=8,
)

train = dict(
    output_dir='work_dirs/sdxl_decoder',
    seed=42,
    max_steps=100000,
    global_batch_size=128,  # paper: 128 (8 GPUs x 4 images x 4 accumulation steps)
    micro_batch_size=4,
    lr=2e-5,  # paper
    lr_schedule='constant_with_warmup',
    warmup_steps=1000,
    adam_betas=(0.9, 0.999),
    adam_eps=1e-8,
    weight_decay=1e-2,
    max_grad_norm=1.0,
    mixed_precision='bf16',
    gradient_checkpointing=True,
    ema_decay=0.9999,
    code_dropout=0.1,  # all-zero code map = the unconditional branch of guidance at inference
    log_every=20,
    checkpoint_every=2000,
    checkpoints_total_limit=3,
    resume='latest',
)

sample = dict(every=2000, num_images=4, num_inference_steps=20, guidance_scale=2.0, seed=0)
