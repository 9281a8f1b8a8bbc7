# Training defaults shared by the ILLUME+ MLLM configs. Keys that are transformers
# `TrainingArguments` fields build it; the others are ILLUME's own switches (official names).

training_args = dict(
    optim='adamw_torch',
    remove_unused_columns=False,
    model_max_length=512,
    bits=16,  # only 16-bit training is supported
    # LoRA (off in every released recipe)
    lora_enable=False,
    lora_r=64,
    lora_alpha=16,
    lora_dropout=0.05,
    lora_weight_path='',
    lora_bias='none',
    # per-module learning rates; None = use learning_rate. Each applies on its own (upstream ignored
    # mm_vision_tower_lr unless mm_projector_lr was also set)
    mm_projector_lr=None,
    mm_vision_tower_lr=None,
    vision_token_lr=None,
    group_by_modality_length=False,
    save_total_limit=1,
    disable_tqdm=True,
)
