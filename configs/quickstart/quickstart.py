# Settings of `illume quickstart` (also `make quickstart`, `python -m illume.quickstart`).
# Any key can be overridden on the command line, e.g. `illume quickstart --tokenizer_steps=200`.
# Relative paths are relative to the repository root. The defaults take about 4-6 minutes on
# a 2-core CPU.

# Bundled data (scikit-image photos): which photos (empty: all eight, see
# ILLUME/illume/quickstart/example_data.py), square side of the saved photos, edits per photo.
photos = []
photo_size = 256
edits_per_photo = 2

# Side of every image the models see and generate: a resolution tag (a multiple of 64).
resolution = 64

# Stage 2: the tokenizer, trained from scratch on the photos and their edits.
tokenizer_config = 'configs/quickstart/dualvitok_quickstart.py'
tokenizer_steps = 500

# Stage 4: the LLM. A byte-level BPE learned from the quick-start texts (see
# ILLUME/illume/quickstart/tiny_llm.py for why not the real Qwen2.5 vocabulary) and a random Qwen2.
bpe_vocab_size = 512
llm = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

# Stage 5: MLLM training under torchrun (processes on this machine).
mllm_config = 'configs/quickstart/illume_quickstart.py'
mllm_steps = 400
nproc_per_node = 1

# Stage 6: inference with IllumePipeline. Greedy decoding without CFG: the model memorised the
# set, and the unconditional prompt was never trained (cfg_text_dropout_probability=0).
understanding_questions = ['Describe the image.', 'Is this photo in colour or in black and white?']
max_new_tokens = 48

# CPU threads per process. None: measured before each stage, so that processes x threads fit the
# cores other programs leave free (ILLUME/illume/quickstart/threads.py); a number fixes it.
num_threads = None
seed = 0
