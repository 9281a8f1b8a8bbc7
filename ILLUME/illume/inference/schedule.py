"""What a row needs at one decoding step, and the grammar of text outside image blocks.

Inside an image block the grammar is the vocabulary's own `ImageVocabulary.schedule(grid)`.
`Requirement` is what one row needs at one step: a forced id, or a draw of some phase from an id
range minus a few banned ids. `TextRules` derives the text-phase requirements from the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from illume.inference.sampling import TEXT
from illume.vocab import RATIOS, RESOLUTION_TAG_SIZES, ImageGrid, ImageVocabulary

__all__ = ["Requirement", "GENERATION_RESOLUTIONS", "TextRules"]

# Resolutions an interleaved (chat) answer may open with a tag: the 11 anchors and 256².
GENERATION_RESOLUTIONS: tuple[tuple[int, int], ...] = ((256, 256), *RATIOS)


@dataclass(frozen=True)
class Requirement:
    """What a row needs for its next token: `forced` id (>= 0), else a `phase` draw from ids
    [lo, hi) except `banned`. Hashable, so step patterns can be cached."""

    forced: int = -1
    phase: int = TEXT
    lo: int = 0
    hi: int = 0
    banned: tuple[int, ...] = ()

    @property
    def sampled(self) -> bool:
        return self.forced < 0


class TextRules:
    """Requirements outside image blocks, derived once from the vocabulary.

    Text may use every id below the first code id except the in-image markers; with images
    allowed, `<start_of_image>` and the height tags of `resolutions` may open an image. After a
    height tag only the matching width tags may follow, then `<start_of_image>` is forced.
    """

    def __init__(
        self, vocab: ImageVocabulary, resolutions: Sequence[tuple[int, int]] = GENERATION_RESOLUTIONS
    ):
        self.vocab = vocab
        self.resolutions = tuple((int(h), int(w)) for h, w in resolutions)
        for h, w in self.resolutions:
            if h not in RESOLUTION_TAG_SIZES or w not in RESOLUTION_TAG_SIZES:
                raise ValueError(
                    f"resolution {h}x{w} has no <height_*>/<width_*> tag; sizes: {RESOLUTION_TAG_SIZES}"
                )
        self.text_hi = min(vocab.level_offsets)
        in_image = [
            vocab.end_of_image,
            vocab.end_of_line,
            *vocab.start_of_levels,
            *vocab.end_of_levels,
            *vocab.width_tags,
        ]
        allowed_heights = {vocab.height_tag_id(h) for h, _ in self.resolutions}
        unused_heights = [t for t in vocab.height_tags if t not in allowed_heights]
        self.with_images = Requirement(
            phase=TEXT, lo=0, hi=self.text_hi, banned=tuple(sorted(in_image + unused_heights))
        )
        no_image = in_image + [vocab.start_of_image, *vocab.height_tags]
        self.text_only = Requirement(phase=TEXT, lo=0, hi=self.text_hi, banned=tuple(sorted(set(no_image))))
        self._height_of = {vocab.height_tag_id(h): h for h in RESOLUTION_TAG_SIZES}
        self._width_of = {vocab.width_tag_id(w): w for w in RESOLUTION_TAG_SIZES}

    def text(self, allow_images: bool) -> Requirement:
        return self.with_images if allow_images else self.text_only

    def height_of(self, token: int) -> int | None:
        return self._height_of.get(token)

    def width_of(self, token: int) -> int | None:
        return self._width_of.get(token)

    def after_height(self, height: int) -> Requirement:
        """Only the width tags that complete an allowed resolution with `height`."""
        widths = [self.vocab.width_tag_id(w) for h, w in self.resolutions if h == height]
        lo, hi = min(widths), max(widths) + 1
        banned = tuple(t for t in range(lo, hi) if t not in widths)
        return Requirement(phase=TEXT, lo=lo, hi=hi, banned=banned)

    def max_image_tokens(self) -> int:
        """Longest tag + image block among the allowed resolutions."""
        return 2 + max(ImageGrid.for_resolution(h, w).num_tokens for h, w in self.resolutions)
