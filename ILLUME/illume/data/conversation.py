"""Chat templates: how a conversation becomes the prompt text the LLM is trained and queried on.

ILLUME+ uses Qwen2.5's ChatML layout (`qwen2`, formats.md §4): a fixed system turn, then
`<|im_start|>{role}\n{content}<|im_end|>\n` per message. Training and inference both render
through :class:`ChatTemplate` so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["USER", "ASSISTANT", "ChatTemplate", "CHAT_TEMPLATES", "get_template"]

USER = 0
ASSISTANT = 1


@dataclass(frozen=True)
class ChatTemplate:
    """Role prefixes, separator and system turn of one chat format.

    `render` follows the official `get_prompt`: system + sep, then role + content + sep per message;
    a message whose content is None or empty contributes only its role prefix (the open assistant
    turn of a generation prompt).
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep: str

    @property
    def system_turn(self) -> str:
        return self.system + self.sep

    def render(self, messages: Sequence[tuple[int, str | None]]) -> str:
        parts = [self.system_turn]
        for role, content in messages:
            parts.append(self.roles[role])
            if content:
                parts.append(content + self.sep)
        return "".join(parts)

    def generation_prompt(self, user_message: str, assistant_prefix: str = "") -> str:
        """A one-turn prompt ending in an open assistant turn, optionally pre-filled (e.g. a resolution tag)."""
        return self.render([(USER, user_message), (ASSISTANT, None)]) + assistant_prefix


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
