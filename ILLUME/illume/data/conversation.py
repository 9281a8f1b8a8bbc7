"""Chat templates: how a conversation becomes the prompt text the LLM is trained and queried on.

ILLUME+ uses Qwen2.5's ChatML layout (`qwen2`, formats.md §4): a fixed system turn, then
`<|im_start|>{role}\n{content}<|im_end|>\n` per message. Training and inference both render
through :class:`ChatTemplate` so the two can never drift apart.

A rendered prompt is a :class:`Prompt`: the text plus which parts the template wrote. At inference
only those parts may turn into control tokens; what a user typed is tokenized as plain text, so a
typed `<|im_end|>` cannot close the user's turn (`illume.inference.prompts.PromptTokenizer`).
Training renders the same text and tokenizes it whole (its data places `<image>` on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["USER", "ASSISTANT", "Prompt", "ChatTemplate", "CHAT_TEMPLATES", "get_template"]

USER = 0
ASSISTANT = 1


class Prompt(str):
    """Prompt text that remembers the character spans its template wrote (`template_spans`).

    A plain `str` piece counts as user text: forgetting to mark template text makes a prompt
    wrong, never injectable. `+` keeps the spans; other `str` methods return a plain `str`.
    """

    template_spans: tuple[tuple[int, int], ...]

    def __new__(cls, text: str = "", template_spans: Iterable[tuple[int, int]] = ()) -> Prompt:
        prompt = super().__new__(cls, text)
        prompt.template_spans = tuple((int(a), int(b)) for a, b in template_spans)
        return prompt

    @classmethod
    def template(cls, text: str) -> Prompt:
        """Text written by a template: its control strings (`<|im_start|>`, tags, `<image>`) count."""
        return cls(text, [(0, len(text))] if text else [])

    @classmethod
    def join(cls, parts: Iterable[str]) -> Prompt:
        """Concatenate pieces; `Prompt` pieces keep their template spans, plain `str` pieces are user text."""
        texts: list[str] = []
        spans: list[tuple[int, int]] = []
        offset = 0
        for part in parts:
            for start, end in getattr(part, "template_spans", ()):
                if spans and spans[-1][1] == start + offset:
                    spans[-1] = (spans[-1][0], end + offset)
                else:
                    spans.append((start + offset, end + offset))
            texts.append(str(part))
            offset += len(part)
        return cls("".join(texts), spans)

    def pieces(self) -> list[tuple[str, bool]]:
        """The whole text as consecutive `(text, written_by_template)` runs."""
        runs: list[tuple[str, bool]] = []
        position = 0
        for start, end in self.template_spans:
            if start > position:
                runs.append((self[position:start], False))
            runs.append((self[start:end], True))
            position = end
        if position < len(self):
            runs.append((self[position:], False))
        return [(str(text), is_template) for text, is_template in runs]

    def __add__(self, other: str) -> Prompt:
        return Prompt.join((self, other)) if isinstance(other, str) else NotImplemented

    def __radd__(self, other: str) -> Prompt:
        return Prompt.join((other, self)) if isinstance(other, str) else NotImplemented

    def __reduce__(self) -> tuple:
        return (Prompt, (str(self), self.template_spans))


@dataclass(frozen=True)
class ChatTemplate:
    """Role prefixes, separator and system turn of one chat format.

    `render` follows the official `get_prompt`: system + sep, then role + content + sep per message;
    a message whose content is None or empty contributes only its role prefix (the open assistant
    turn of a generation prompt). Contents are user text unless they are `Prompt`s with template spans.
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep: str

    @property
    def system_turn(self) -> str:
        return self.system + self.sep

    def render(self, messages: Sequence[tuple[int, str | None]]) -> Prompt:
        parts = [Prompt.template(self.system_turn)]
        for role, content in messages:
            parts.append(Prompt.template(self.roles[role]))
            if content:
                parts += [content, Prompt.template(self.sep)]
        return Prompt.join(parts)

    def generation_prompt(self, user_message: str, assistant_prefix: str = "") -> Prompt:
        """A one-turn prompt ending in an open assistant turn, optionally pre-filled (e.g. a resolution tag)."""
        return self.render([(USER, user_message), (ASSISTANT, None)]) + Prompt.template(assistant_prefix)


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    "qwen2": ChatTemplate(
        name="qwen2",
        system="<|im_start|>system\nYou are a helpful assistant.",
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>\n",
    ),
}


def get_template(name: str) -> ChatTemplate:
    """The template registered as `name` (`model_args.version` in the official configs)."""
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown conversation template {name!r}; choose one of {sorted(CHAT_TEMPLATES)}"
        ) from None
