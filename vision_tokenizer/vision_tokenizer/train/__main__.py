"""`python -m vision_tokenizer.train CONFIG [--a.b=value ...]`."""

from vision_tokenizer.train.cli import main

if __name__ == "__main__":
    main()
