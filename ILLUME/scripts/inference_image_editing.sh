#!/usr/bin/env bash
# Image-editing evaluation with the official settings (T 0.7, top-k 512, top-p 0.8, LLM CFG 1.25,
# SDXL CFG 2.0, bf16): each input is padded to its aspect-ratio anchor and the result un-padded
# back to the input size. Input images are looked up in images/ beside the jsonl (or --image_dir).
# Override paths with environment variables; extra flags go to illume.eval.generation_eval.
set -euo pipefail

MLLM=${MLLM:-checkpoints/illume_plus-qwen2_5-3b}
DUALVITOK=${DUALVITOK:-checkpoints/dualvitok}
SDXL_DECODER=${SDXL_DECODER:-checkpoints/dualvitok-sdxl-decoder}
EDIT_JSONL=${EDIT_JSONL:?set EDIT_JSONL to a jsonl of {"images": [name], "conversations": [...]} lines}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/eval_editing}
NPROC=${NPROC:-8}

decoder_flags=()
if [[ -n "${SDXL_DECODER}" && -d "${SDXL_DECODER}" ]]; then
  decoder_flags=(--diffusion_decoder_path "${SDXL_DECODER}")
fi

torchrun --nproc_per_node "${NPROC}" -m illume.eval.generation_eval \
  --mllm_path "${MLLM}" \
  --tokenizer_checkpoint "${DUALVITOK}" \
  "${decoder_flags[@]}" \
  --edit "${EDIT_JSONL}" \
  --output_dir "${OUTPUT_DIR}" \
  --batch_size 8 \
  --temperature 0.7 --top_k 512 --top_p 0.8 \
  --llm_cfg_scale 1.25 --diffusion_cfg_scale 2.0 \
  --torch_dtype bf16 \
  "$@"
