"""Benchmark runners behind `illume eval <suite>`: the paper's generation, editing and understanding suites.

Each runner turns a benchmark's own input files into the folder layout its official scorer reads,
shards the work over torchrun ranks, skips finished items on restart and records its settings.
"""
