"""Evaluation entry points of ILLUME+ (generation eval; benchmark plugins)."""
