# Shortcuts for the common jobs. Each target installs the project first if it is not importable.
PYTHON ?= python3
# Extra settings for the quick start, e.g. make quickstart ARGS="--set tokenizer_steps=200"
ARGS ?=

.PHONY: quickstart test lint install

quickstart: install
	$(PYTHON) -m illume.quickstart $(ARGS)

test: install
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

# The README's set-up command (scripts/install.sh), run only when something it installs is missing.
install:
	@$(PYTHON) -c "import illume, vision_tokenizer, matplotlib, skimage, peft, torchao, deepspeed, lmms_eval, datasets" 2>/dev/null || \
		PYTHON=$(PYTHON) bash scripts/install.sh
