"""The one owner of ILLUME+'s token-id layout and of the image-token grammar.

ILLUME+ extends a Qwen2.5 vocabulary with image-structure markers, resolution tags and one token per
DualViTok code (level 0 = semantic codes, level 1 = pixel codes). The official code scatters the
resulting ids as literals; here every id is read from a tokenizer (or from a saved id table) once,
into an :class:`ImageVocabulary`, so a checkpoint with other codebook sizes or a differently sized
base vocabulary works unchanged.

An image is written as (formats.md §2, SPEC-mllm C5)::

    <start_of_image><start_of_level0> (ws level-0 codes, <end_of_line>) x hs <end_of_level0>
    <start_of_level1> (wp level-1 codes, <end_of_line>) x hp <end_of_level1><end_of_image>

preceded by the resolution tag ``<height_H><width_W>`` whenever the image is a generation target.
The same grammar, with projected continuous features in place of the code tokens, is how input
images enter the LLM (SPEC-mllm C2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from vision_tokenizer.data.transforms import RATIOS as ANCHORS
from vision_tokenizer.models.vit_input import vit_target_size

__all__ = [
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_INDEX",
    "IGNORE_INDEX",
    "END_OF_TEXT",
    "START_OF_IMAGE",
    "END_OF_IMAGE",
    "END_OF_LINE",
    "SPECIAL_IMAGE_TOKENS",
    "RESOLUTION_TAG_SIZES",
    "DEFAULT_CODEBOOK_SIZES",
    "SEMANTIC_PATCH",
    "PIXEL_PATCH",
    "RATIOS",
    "start_of_level",
    "end_of_level",
    "height_tag",
    "width_tag",
    "resolution_tag",
    "code_token",
    "extension_tokens",
    "image_block_text",
    "ImageGrid",
    "anchor_grids",
    "image_block_layout",
    "ImageSchedule",
    "ImageVocabulary",
    "MalformedImageTokens",
]

# Not vocabulary ids: the sentinel that marks `<image>` in `input_ids` and the loss ignore index.
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100

END_OF_TEXT = "<|im_end|>"
START_OF_IMAGE = "<start_of_image>"
END_OF_IMAGE = "<end_of_image>"
END_OF_LINE = "<end_of_line>"

DEFAULT_CODEBOOK_SIZES: tuple[int, int] = (32768, 98304)
RESOLUTION_TAG_SIZES: tuple[int, ...] = tuple(range(64, 1025, 64))

# Pixels per token of the semantic (ViT 14-px patches merged 2x2) and pixel (MoVQ stride) grids.
SEMANTIC_PATCH = 28
PIXEL_PATCH = 16

# The 11 (height, width) anchors of `anyres_dualvitok_fix_anchors` (SPEC-mllm C6), official order;
# owned by the tokenizer package (codebook inference crops to them) and re-exported here.
RATIOS = ANCHORS


def start_of_level(level: int) -> str:
    return f"<start_of_level{level}>"


def end_of_level(level: int) -> str:
    return f"<end_of_level{level}>"


# Order of `config.special_tokens_ids` (soi, eoi, eol, sol0, eol0, sol1, eol1), which is also the
# order in which the extension script adds them.
SPECIAL_IMAGE_TOKENS: tuple[str, ...] = (
    START_OF_IMAGE,
    END_OF_IMAGE,
    END_OF_LINE,
    start_of_level(0),
    end_of_level(0),
    start_of_level(1),
    end_of_level(1),
)


def height_tag(height: int) -> str:
    return f"<height_{height}>"


def width_tag(width: int) -> str:
    return f"<width_{width}>"


def resolution_tag(height: int, width: int) -> str:
    """`<height_H><width_W>`: pixel sizes, e.g. `<height_512><width_384>`."""
    return height_tag(height) + width_tag(width)


def code_token(level: int, code: int) -> str:
    return f"<|image_level{level}_{code}|>"


_CODE_TOKEN_RE = re.compile(r"<\|image_level(\d+)_(\d+)\|>")


def extension_tokens(codebook_sizes: Sequence[int] = DEFAULT_CODEBOOK_SIZES) -> list[str]:
    """Every token the extension script adds, in the official `add_tokens` order (formats.md §1)."""
    tokens = [START_OF_IMAGE, END_OF_IMAGE, END_OF_LINE]
    for level in range(len(codebook_sizes)):
        tokens += [start_of_level(level), end_of_level(level)]
    tokens += [height_tag(size) for size in RESOLUTION_TAG_SIZES]
    tokens += [width_tag(size) for size in RESOLUTION_TAG_SIZES]
    for level, size in enumerate(codebook_sizes):
        tokens += [code_token(level, code) for code in range(size)]
    return tokens


def _as_grid(codes: Any, name: str) -> torch.Tensor:
    grid = torch.as_tensor(codes)
    if grid.dim() == 3 and grid.shape[0] == 1:
        grid = grid[0]
    if grid.dim() != 2 or grid.numel() == 0 or grid.is_floating_point():
        raise ValueError(
            f"{name} must be a non-empty 2-D integer grid [rows, cols], got shape {tuple(grid.shape)}"
        )
    return grid.long()


def image_block_text(semantic_codes: Any, pixel_codes: Any) -> str:
    """The image block as text (official `encode_image_token_into_code`): no tag, no whitespace."""
    parts = [START_OF_IMAGE]
    for level, codes in enumerate((semantic_codes, pixel_codes)):
        grid = _as_grid(codes, f"level-{level} codes")
        parts.append(start_of_level(level))
        for row in grid.tolist():
            parts.extend(code_token(level, code) for code in row)
            parts.append(END_OF_LINE)
        parts.append(end_of_level(level))
    parts.append(END_OF_IMAGE)
    return "".join(parts)


@dataclass(frozen=True)
class ImageGrid:
    """Token grids of one image: semantic (hs, ws) on the 28-px ViT grid, pixel (hp, wp) at stride 16."""

    semantic: tuple[int, int]
    pixel: tuple[int, int]

    @classmethod
    def for_resolution(cls, height: int, width: int) -> ImageGrid:
        """Grids of an H x W image (pixels, multiples of 16): semantic from the ViT resize table."""
        if height % PIXEL_PATCH or width % PIXEL_PATCH or height <= 0 or width <= 0:
            raise ValueError(f"image size {height}x{width} must be positive multiples of {PIXEL_PATCH}")
        vit_h, vit_w = vit_target_size(height, width)
        return cls(
            (vit_h // SEMANTIC_PATCH, vit_w // SEMANTIC_PATCH), (height // PIXEL_PATCH, width // PIXEL_PATCH)
        )

    @property
    def num_semantic(self) -> int:
        return self.semantic[0] * self.semantic[1]

    @property
    def num_pixel(self) -> int:
        return self.pixel[0] * self.pixel[1]

    @property
    def num_tokens(self) -> int:
        """Length of the image block (soi … eoi), without the resolution tag."""
        (hs, ws), (hp, wp) = self.semantic, self.pixel
        return 2 + (hs * (ws + 1) + 2) + (hp * (wp + 1) + 2)


def anchor_grids() -> dict[tuple[int, int], ImageGrid]:
    """Token grids of the 11 aspect-ratio anchors, keyed (height, width)."""
    return {anchor: ImageGrid.for_resolution(*anchor) for anchor in RATIOS}


def image_block_layout(grid: ImageGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """What sits at each position of an image block, independent of any tokenizer.

    Returns `(marker, level)`, both int64 of length `grid.num_tokens`: `marker[i]` indexes
    `SPECIAL_IMAGE_TOKENS` (so `special_tokens_ids[marker[i]]` is the id) or is -1 at a code /
    feature position; `level[i]` is 0 (semantic) or 1 (pixel) there and -1 elsewhere. Code
    positions of a level come in raster order of its grid.
    """
    slot = {token: i for i, token in enumerate(SPECIAL_IMAGE_TOKENS)}
    markers = [torch.tensor([slot[START_OF_IMAGE]])]
    levels = [torch.tensor([-1])]
    for lv, (rows, cols) in enumerate((grid.semantic, grid.pixel)):
        row_marker = torch.cat([torch.full((cols,), -1), torch.tensor([slot[END_OF_LINE]])])
        row_level = torch.cat([torch.full((cols,), lv), torch.tensor([-1])])
        markers += [
            torch.tensor([slot[start_of_level(lv)]]),
            row_marker.repeat(rows),
            torch.tensor([slot[end_of_level(lv)]]),
        ]
        levels += [torch.tensor([-1]), row_level.repeat(rows), torch.tensor([-1])]
    markers.append(torch.tensor([slot[END_OF_IMAGE]]))
    levels.append(torch.tensor([-1]))
    return torch.cat(markers).long(), torch.cat(levels).long()


@dataclass(frozen=True)
class ImageSchedule:
    """What each position of an image block may hold: the one grammar every decoder follows.

    `forced[i]` is the only token allowed at position i, or -1 where a code is sampled; `level[i]`
    is the code level sampled there (-1 at forced positions). Position 0 is `<start_of_image>`.
    Plain tuples: decoders walk them on the host, once per generated token.
    """

    grid: ImageGrid
    forced: tuple[int, ...]
    level: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.forced)


@lru_cache(maxsize=64)
def _schedule(vocab: ImageVocabulary, grid: ImageGrid) -> ImageSchedule:
    marker, level = image_block_layout(grid)
    special = torch.tensor(vocab.special_tokens_ids, dtype=torch.long)
    forced = torch.where(marker >= 0, special[marker.clamp(min=0)], -1)
    return ImageSchedule(grid, tuple(forced.tolist()), tuple(level.tolist()))


class MalformedImageTokens(ValueError):
    """A token sequence does not follow the image-block grammar."""


def _lookup_ids(tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Ids of `tokens`, each required to exist as a single vocabulary entry."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [tok for tok, i in zip(tokens, ids) if i is None or (unk is not None and i == unk)]
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ValueError(
            f"tokenizer lacks {len(missing)} ILLUME token(s) ({shown}); extend it with "
            "ILLUME/scripts/prepare_llm_with_extended_vision_tokenizer.py"
        )
    return [int(i) for i in ids]


def _count_code_tokens(tokenizer: Any) -> tuple[int, ...]:
    counts: dict[int, int] = {}
    for token in tokenizer.get_added_vocab():
        match = _CODE_TOKEN_RE.fullmatch(token)
        if match:
            counts[int(match.group(1))] = counts.get(int(match.group(1)), 0) + 1
    if sorted(counts) != list(range(len(counts))) or len(counts) < 2:
        raise ValueError(
            f"tokenizer has image code tokens for levels {sorted(counts)}; expected levels 0 and 1"
        )
    return tuple(counts[level] for level in range(len(counts)))


@dataclass(frozen=True)
class ImageVocabulary:
    """Ids of every ILLUME token, derived from a tokenizer or from a saved id table.

    Code ids are contiguous per level: `<|image_level{l}_{k}|>` = `level_offsets[l] + k`;
    `height_tags[i]` / `width_tags[i]` are the ids of `<height_{RESOLUTION_TAG_SIZES[i]}>` / width.
    """

    start_of_image: int
    end_of_image: int
    end_of_line: int
    start_of_levels: tuple[int, ...]
    end_of_levels: tuple[int, ...]
    height_tags: tuple[int, ...]
    width_tags: tuple[int, ...]
    level_offsets: tuple[int, ...]
    codebook_sizes: tuple[int, ...]
    end_of_text: int
    pad: int

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tokenizer(cls, tokenizer: Any, codebook_sizes: Sequence[int] | None = None) -> ImageVocabulary:
        """Read the layout from an extended tokenizer; codebook sizes are counted when not given."""
        sizes = (
            tuple(int(s) for s in codebook_sizes)
            if codebook_sizes is not None
            else _count_code_tokens(tokenizer)
        )
        special = dict(zip(SPECIAL_IMAGE_TOKENS[:3], _lookup_ids(tokenizer, SPECIAL_IMAGE_TOKENS[:3])))
        levels = range(len(sizes))
        starts = _lookup_ids(tokenizer, [start_of_level(lv) for lv in levels])
        ends = _lookup_ids(tokenizer, [end_of_level(lv) for lv in levels])
        heights = _lookup_ids(tokenizer, [height_tag(s) for s in RESOLUTION_TAG_SIZES])
        widths = _lookup_ids(tokenizer, [width_tag(s) for s in RESOLUTION_TAG_SIZES])
        offsets = []
        for level, size in enumerate(sizes):
            first, last = _lookup_ids(tokenizer, [code_token(level, 0), code_token(level, size - 1)])
            if last - first != size - 1:
                raise ValueError(
                    f"level-{level} code tokens are not contiguous for codebook size {size}: "
                    f"{code_token(level, 0)}={first}, {code_token(level, size - 1)}={last}"
                )
            offsets.append(first)
        (end_of_text,) = _lookup_ids(tokenizer, [END_OF_TEXT])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_text
        return cls(
            start_of_image=special[START_OF_IMAGE],
            end_of_image=special[END_OF_IMAGE],
            end_of_line=special[END_OF_LINE],
            start_of_levels=tuple(starts),
            end_of_levels=tuple(ends),
            height_tags=tuple(heights),
            width_tags=tuple(widths),
            level_offsets=tuple(offsets),
            codebook_sizes=sizes,
            end_of_text=end_of_text,
            pad=int(pad),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able id table (`from_dict` restores it without a tokenizer)."""
        return {name: (list(v) if isinstance(v, tuple) else v) for name, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> ImageVocabulary:
        expected = set(cls.__dataclass_fields__)
        if set(table) != expected:
            raise ValueError(
                f"id table keys differ: missing {sorted(expected - set(table))}, unexpected {sorted(set(table) - expected)}"
            )
        return cls(
            **{
                k: (tuple(int(x) for x in v) if isinstance(v, list | tuple) else int(v))
                for k, v in table.items()
            }
        )

    # ------------------------------------------------------------------ simple lookups
    @property
    def special_tokens_ids(self) -> list[int]:
        """[soi, eoi, eol, sol0, eol0, sol1, eol1]: the model config's `special_tokens_ids`."""
        return [
            self.start_of_image,
            self.end_of_image,
            self.end_of_line,
            self.start_of_levels[0],
            self.end_of_levels[0],
            self.start_of_levels[1],
            self.end_of_levels[1],
        ]

    @property
    def text_token_num(self) -> int:
        """Number of ids before the ILLUME tokens (the official `text_token_num`, 151665)."""
        return self.start_of_image

    @property
    def num_tokens(self) -> int:
        """`len(tokenizer)` after extension: one past the last level's last code id."""
        return self.level_offsets[-1] + self.codebook_sizes[-1]

    def level_range(self, level: int) -> tuple[int, int]:
        """Half-open id range [start, stop) of the level's code tokens."""
        return self.level_offsets[level], self.level_offsets[level] + self.codebook_sizes[level]

    def height_tag_id(self, height: int) -> int:
        return self.height_tags[self._tag_index(height, "height")]

    def width_tag_id(self, width: int) -> int:
        return self.width_tags[self._tag_index(width, "width")]

    def resolution_tag_ids(self, height: int, width: int) -> list[int]:
        return [self.height_tag_id(height), self.width_tag_id(width)]

    @staticmethod
    def _tag_index(size: int, what: str) -> int:
        if size not in RESOLUTION_TAG_SIZES:
            raise ValueError(f"no <{what}_{size}> tag: {what} must be one of {RESOLUTION_TAG_SIZES}")
        return RESOLUTION_TAG_SIZES.index(size)

    # ------------------------------------------------------------------ codes <-> ids
    def codes_to_ids(self, level: int, codes: Any) -> torch.Tensor:
        """Token ids of code indices (any shape); raises on codes outside the codebook."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        size = self.codebook_sizes[level]
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
            raise ValueError(
                f"level-{level} codes must lie in [0, {size}), got range [{int(codes.min())}, {int(codes.max())}]"
            )
        return codes + self.level_offsets[level]

    def ids_to_codes(self, level: int, ids: Any) -> torch.Tensor:
        """Code indices of level-`level` token ids (any shape); raises on ids of anything else."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        start, stop = self.level_range(level)
        outside = (ids < start) | (ids >= stop)
        if bool(outside.any()):
            bad = int(ids[outside][0])
            raise ValueError(f"id {bad} is not a level-{level} code token (range [{start}, {stop}))")
        return ids - start

    def is_code(self, ids: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Boolean mask of code-token ids (of one level, or of any level when `level` is None)."""
        levels = range(len(self.codebook_sizes)) if level is None else (level,)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for lv in levels:
            start, stop = self.level_range(lv)
            mask |= (ids >= start) & (ids < stop)
        return mask

    # ------------------------------------------------------------------ image blocks
    def _level_rows(self, level: int, grid: torch.Tensor) -> torch.Tensor:
        """[rows*(cols+1)] ids: each row of code ids followed by `<end_of_line>`."""
        ids = self.codes_to_ids(level, grid)
        eol = torch.full((ids.shape[0], 1), self.end_of_line, dtype=torch.long)
        return torch.cat([ids, eol], dim=1).flatten()

    def image_token_ids(self, semantic_codes: Any, pixel_codes: Any) -> list[int]:
        """The image block (soi … eoi, no tag) of a semantic [hs,ws] and a pixel [hp,wp] code grid."""
        sem = _as_grid(semantic_codes, "semantic codes")
        pix = _as_grid(pixel_codes, "pixel codes")
        pieces = [torch.tensor([self.start_of_image])]
        for level, grid in enumerate((sem, pix)):
            pieces += [
                torch.tensor([self.start_of_levels[level]]),
                self._level_rows(level, grid),
                torch.tensor([self.end_of_levels[level]]),
            ]
        pieces.append(torch.tensor([self.end_of_image]))
        return torch.cat(pieces).tolist()

    def generation_target_ids(
        self, semantic_codes: Any, pixel_codes: Any, height: int, width: int
    ) -> list[int]:
        """Resolution tag followed by the image block: what the model learns to emit."""
        return self.resolution_tag_ids(height, width) + self.image_token_ids(semantic_codes, pixel_codes)

    def schedule(self, grid: ImageGrid) -> ImageSchedule:
        """Per-position plan of an image block (cached): forced marker ids, and which level is sampled where."""
        return _schedule(self, grid)

    # ------------------------------------------------------------------ parsing
    def token_name(self, token_id: int) -> str:
        """A readable name for error messages."""
        names = dict(zip(self.special_tokens_ids, SPECIAL_IMAGE_TOKENS))
        if token_id in names:
            return names[token_id]
        for lv in range(len(self.codebook_sizes)):
            start, stop = self.level_range(lv)
            if start <= token_id < stop:
                return code_token(lv, token_id - start)
        if token_id in self.height_tags:
            return height_tag(RESOLUTION_TAG_SIZES[self.height_tags.index(token_id)])
        if token_id in self.width_tags:
            return width_tag(RESOLUTION_TAG_SIZES[self.width_tags.index(token_id)])
        return f"id {token_id}"

    def parse_image_block(
        self, ids: Iterable[int], grid: ImageGrid | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of `image_token_ids`: an exact soi … eoi block → (semantic [hs,ws], pixel [hp,wp]).

        Raises `MalformedImageTokens` naming the first offending position; with `grid`, the
        parsed grid sizes must match it too.
        """
        seq = [int(i) for i in ids]
        reader = _BlockReader(self, seq)
        reader.expect(self.start_of_image)
        grids = [reader.level(level) for level in range(2)]
        reader.expect(self.end_of_image)
        if reader.pos != len(seq):
            raise MalformedImageTokens(
                f"{len(seq) - reader.pos} token(s) after <end_of_image> at position {reader.pos - 1}"
            )
        if grid is not None:
            found = (tuple(grids[0].shape), tuple(grids[1].shape))
            if found != (grid.semantic, grid.pixel):
                raise MalformedImageTokens(
                    f"image grids {found} differ from the expected semantic {grid.semantic} / pixel {grid.pixel}"
                )
        return grids[0], grids[1]

    def extract_image_codes(
        self, ids: Iterable[int], grid: ImageGrid | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Code grids of every image block in a generated sequence (text around them is ignored).

        An unterminated block (no `<end_of_image>`, e.g. generation stopped early) is an error.
        """
        seq = [int(i) for i in ids]
        found = []
        pos = 0
        while self.start_of_image in seq[pos:]:
            start = seq.index(self.start_of_image, pos)
            if self.end_of_image not in seq[start:]:
                raise MalformedImageTokens(f"<start_of_image> at position {start} has no <end_of_image>")
            stop = seq.index(self.end_of_image, start) + 1
            try:
                found.append(self.parse_image_block(seq[start:stop], grid))
            except MalformedImageTokens as err:
                raise MalformedImageTokens(f"image block at positions {start}..{stop - 1}: {err}") from None
            pos = stop
        return found


class _BlockReader:
    """Cursor over an id sequence that consumes the image grammar and reports where it breaks."""

    def __init__(self, vocab: ImageVocabulary, seq: list[int]) -> None:
        self.vocab = vocab
        self.seq = seq
        self.pos = 0

    def _peek(self) -> int | None:
        return self.seq[self.pos] if self.pos < len(self.seq) else None

    def _fail(self, expected: str) -> MalformedImageTokens:
        found = self._peek()
        what = "end of sequence" if found is None else self.vocab.token_name(found)
        return MalformedImageTokens(f"position {self.pos}: expected {expected}, found {what}")

    def expect(self, token_id: int) -> None:
        if self._peek() != token_id:
            raise self._fail(self.vocab.token_name(token_id))
        self.pos += 1

    def level(self, level: int) -> torch.Tensor:
        vocab = self.vocab
        start, stop = vocab.level_range(level)
        self.expect(vocab.start_of_levels[level])
        rows: list[list[int]] = []
        while self._peek() != vocab.end_of_levels[level]:
            row: list[int] = []
            while (tok := self._peek()) is not None and start <= tok < stop:
                row.append(tok - start)
                self.pos += 1
            if not row:
                raise self._fail(f"a level-{level} code or {end_of_level(level)}")
            if rows and len(row) != len(rows[0]):
                raise MalformedImageTokens(
                    f"position {self.pos}: level-{level} row {len(rows)} has {len(row)} codes, "
                    f"row 0 has {len(rows[0])}"
                )
            self.expect(vocab.end_of_line)
            rows.append(row)
        if not rows:
            raise self._fail(f"a level-{level} code")
        self.pos += 1
        return torch.tensor(rows, dtype=torch.long)
