"""The ILLUME+ Gradio demo (`python -m illume.serve.app`): page layout, request handlers, input limits."""
