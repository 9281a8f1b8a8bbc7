#!/usr/bin/env bash
# Text-to-image evaluation with the official settings (T 1.0, top-k 2048, top-p 1.0, LLM CFG 2.0,
# SDXL CFG 2.0, bf16), every caption at all 11 aspect-ratio anchors, sharded over NPROC GPUs.
# Override paths with environment variables; extra flags go to illume.eval.generation_eval, e.g.
#   T2I_JSONL=my_prompts.jsonl bash ILLUME/scripts/inference_text_to_image.sh --resolution_type fixed
set -euo pipefail

MLLM=${MLLM:-checkpoints/illume_plus-qwen2_5-3b}
DUALVITOK=${DUALVITOK:-checkpoints/dualvitok}
SDXL_DECODER=${SDXL_DECODER:-checkpoints/dualvitok-sdxl-decoder}
T2I_JSONL=${T2I_JSONL:?set T2I_JSONL to a jsonl of {"conversations": [{"from": "human", "value": caption}]} lines}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/eval_t2i}
NPROC=${NPROC:-8}

decoder_flags=()
if [[ -n "${SDXL_DECODER}" && -d "${SDXL_DECODER}" ]]; then
  decoder_flags=(--diffusion_decoder_path "${SDXL_DECODER}")
fi

torchrun --nproc_per_node "${NPROC}" -m illume.eval.generation_eval \
  --mllm_path "${MLLM}" \
  --tokenizer_checkpoint "${DUALVITOK}" \
  "${decoder_flags[@]}" \
  --t2i "${T2I_JSONL}" \
  --output_dir "${OUTPUT_DIR}" \
  --batch_size 8 \
  --temperature 1.0 --top_k 2048 --top_p 1.0 \
  --llm_cfg_scale 2.0 --diffusion_cfg_scale 2.0 \
  --torch_dtype bf16 \
  "$@"
