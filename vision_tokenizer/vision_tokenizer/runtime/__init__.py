"""Infrastructure shared by every job of the project, one module per concern.

* `distributed` - the process context (device, backend, rank, world size; CUDA, NPU or CPU/gloo);
* `atomic` - durable file publication (temp name, fsync, atomic rename);
* `checkpoints` - training checkpoints: completion markers, RNG state, retention, safe resume;
* `sharded_jsonl` - rank-sharded, crash-safe, resumable jsonl output with a final merge;
* `jsonl` - the one jsonl reader (BOM, bad UTF-8 / JSON reported as file:line, raise/skip policy).

`illume` builds on these; nothing here imports `illume`.
"""
