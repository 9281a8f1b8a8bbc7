# A decoder training run small enough for a CPU (tests and the quick start): a tiny SDXL-shaped
# folder from `vision_tokenizer.sdxl.tiny.save_tiny_sdxl`, the tiny DualViTok, a handful of images
# at the smallest decoder size. Fill the paths on the command line, e.g.
#
#   python -m vision_tokenizer.sdxl configs/example/sdxl_decoder/sdxl_decoder_tiny.py \
#       --model.sdxl_path=/tmp/tiny_sdxl --model.dualvitok_checkpoint=... --data.root=assets/examples \
#       --train.output_dir=/tmp/tiny_decoder

model = dict(
    sdxl_path=None,
    decoder_path=None,
    dualvitok_checkpoint=None,
    dualvitok_config=None,
    dualvitok_use_ema=False,
    dualvitok_dtype='float32',
    vae_dtype='float32',
)

data = dict(root=None, sizes_file=None, sizes=[(512, 512)], random_flip=True, num_workers=0)

train = dict(
    output_dir=None,
    seed=0,
    max_steps=6,
    global_batch_size=2,
    micro_batch_size=2,
    lr=1e-3,
    lr_schedule='constant',
    warmup_steps=0,
    adam_betas=(0.9, 0.999),
    adam_eps=1e-8,
    weight_decay=0.0,
    max_grad_norm=1.0,
    mixed_precision='no',
    gradient_checkpointing=True,
    ema_decay=0.9,
    code_dropout=0.1,
    log_every=1,
    checkpoint_every=3,
    checkpoints_total_limit=None,
    resume='latest',
)

sample = dict(every=0, num_images=2, num_inference_steps=2, guidance_scale=2.0, seed=0)
