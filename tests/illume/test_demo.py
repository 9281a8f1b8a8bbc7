"""ILLUME+ Gradio demo: handlers against the tiny pipeline, and the real page in headless Chromium."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
from illume.inference.pipeline import IllumePipeline
from illume.serve.handlers import AUTO_RESOLUTION, DECODER_CHOICES, ChatSession, DemoHandlers
from illume.serve.limits import InputError, InputLimits
from PIL import Image

from tests.browser import ARTIFACTS_DIR, browser_page, running_app
from tests.illume import tiny_models

QUESTION = "What is in the picture?"
NEW_TOKENS = 6

tiny_dualvitok_dir = tiny_models.tiny_dualvitok_dir  # shared session fixture
tiny_origin_dir = tiny_models.tiny_origin_dir  # shared session fixture
tiny_sdxl_dir = tiny_models.tiny_sdxl_dir  # shared session fixture


def _photo(path: Path, width: int = 96, height: int = 64) -> Path:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 64 + 0 * x], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def pipe(tiny_origin_dir: Path, tiny_dualvitok_dir: Path, tiny_sdxl_dir: Path) -> IllumePipeline:
    pipe = IllumePipeline.from_pretrained(
        tiny_origin_dir, dualvitok=tiny_dualvitok_dir, sdxl_decoder=tiny_sdxl_dir, device="cpu"
    )
    pipe.sdxl_decoder.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def handlers(pipe: IllumePipeline) -> DemoHandlers:
    return DemoHandlers(
        pipe, InputLimits(max_image_pixels=200 * 200, max_prompt_chars=50, max_turns_per_chat=2)
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _photo(tmp_path_factory.mktemp("demo") / "photo.png")


def _last(stream) -> ChatSession:
    return deque(stream, maxlen=1)[0]


def test_chat_answer_is_the_pipelines_answer(
    handlers: DemoHandlers, pipe: IllumePipeline, photo: Path
) -> None:
    session = _last(handlers.chat(None, QUESTION, str(photo), max_new_tokens=NEW_TOKENS))
    expected = pipe.understand(Image.open(photo).convert("RGB"), QUESTION, max_new_tokens=NEW_TOKENS)[0]
    assert session.turns == (("user", QUESTION, 1), ("assistant", expected))
    assert len(session.images) == 1
    assert [m["role"] for m in session.messages()] == ["user", "user", "assistant"]
    assert session.messages()[0]["content"] == {"path": str(photo)}
    assert session.messages()[-1]["content"] == expected


def test_chat_streams_and_sessions_stay_separate(handlers: DemoHandlers, photo: Path) -> None:
    first = _last(handlers.chat(None, QUESTION, str(photo), max_new_tokens=NEW_TOKENS))
    steps = list(handlers.chat(first, "And now?", None, max_new_tokens=NEW_TOKENS))
    # The user's turn shows at once; the model context grows only when the answer is complete.
    assert steps[0].messages()[-2:] == [
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": ""},
    ]
    assert steps[0].turns == first.turns and len(steps[-1].turns) == 4
    assert steps[-1].images == first.images
    other = _last(handlers.chat(None, "Hi", None, max_new_tokens=NEW_TOKENS))
    assert other.turns[0] == ("user", "Hi") and other.images == () and len(first.turns) == 2


def test_chat_limits(handlers: DemoHandlers, photo: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Please enter a message"):
        _last(handlers.chat(None, "   ", None))
    with pytest.raises(InputError, match="limit is 50"):
        _last(handlers.chat(None, "x" * 51, None))
    big = _photo(tmp_path / "big.png", 300, 300)
    with pytest.raises(InputError, match="exceeds the limit of 40000 pixels"):
        _last(handlers.chat(None, QUESTION, str(big)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputError, match="not an image file"):
        _last(handlers.chat(None, QUESTION, str(broken)))
    full = ChatSession(turns=(("user", "a"), ("assistant", "b")) * 2)
    with pytest.raises(InputError, match="reached 2 turns"):
        _last(handlers.chat(full, QUESTION, None))
    with pytest.raises(InputError, match="Max output tokens"):
        _last(handlers.chat(None, QUESTION, None, max_new_tokens=0))


@pytest.mark.slow
def test_generate_is_seeded_and_decoders_differ_in_size(handlers: DemoHandlers, pipe: IllumePipeline) -> None:
    image = handlers.generate("a cat", "256x256", seed=7)
    expected = pipe.generate(["a cat"], resolution=(256, 256), seed=7)[0]
    assert image.size == (256, 256) and np.array_equal(np.asarray(image), np.asarray(expected))
    sdxl = handlers.generate(
        "a cat", "256x256", seed=7, cfg_scale=1.0, decoder=DECODER_CHOICES[1], diffusion_steps=1
    )
    assert sdxl.size == (512, 512)
    with pytest.raises(InputError, match="Unknown resolution"):
        handlers.generate("a cat", "100x100")


def test_sdxl_choice_without_decoder_is_refused(pipe: IllumePipeline) -> None:
    class NoDecoder:
        sdxl_decoder = None

    bare = DemoHandlers(NoDecoder())
    assert not bare.has_sdxl
    with pytest.raises(InputError, match="--sdxl-decoder"):
        bare.generate("a cat", "256x256", decoder=DECODER_CHOICES[1])


@pytest.mark.slow
def test_edit_keeps_the_input_size(handlers: DemoHandlers, photo: Path) -> None:
    edited = handlers.edit(str(photo), "make it blue", "256x256", seed=3)
    assert edited.size == Image.open(photo).size
    with pytest.raises(InputError, match="Please upload an image"):
        handlers.edit(None, "make it blue", AUTO_RESOLUTION)
    with pytest.raises(InputError, match="Please enter an instruction"):
        handlers.edit(str(photo), "", AUTO_RESOLUTION)


@pytest.mark.slow
def test_page_in_headless_chromium(
    pipe: IllumePipeline,
    tiny_origin_dir: Path,
    tiny_dualvitok_dir: Path,
    photo: Path,
    tmp_path: Path,
) -> None:
    expected = pipe.understand(Image.open(photo).convert("RGB"), QUESTION, max_new_tokens=8)[0]
    # The token limit is also the server's cap, so the answer has 8 tokens even if the browser
    # submits before the slider edit below reaches the app's state.
    args = ["--model", str(tiny_origin_dir), "--dualvitok", str(tiny_dualvitok_dir), "--device", "cpu",
            "--max-new-tokens", "8"]  # fmt: skip
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    with running_app("illume.serve.app", args, tmp_path / "demo.log") as url, browser_page(url) as page:
        # Chat: an image and a question; the streamed answer appears in the chatbot.
        page.locator("#chat-image input[type=file]").set_input_files(str(photo))
        page.locator("#chat-image img").first.wait_for(timeout=30_000)
        page.get_by_text("Text generation").click()
        tokens = page.locator("#chat-max-tokens input[type=number]")
        tokens.fill("8")
        tokens.press("Enter")
        page.locator("#chat-message textarea").fill(QUESTION)
        page.locator("#chat-send").click()
        page.locator("#chatbot [data-testid=user] img").first.wait_for(timeout=60_000)
        bot = page.locator("#chatbot [data-testid=bot]").last
        bot.wait_for(timeout=120_000)
        page.wait_for_function(
            "n => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');"
            " return b.length && b[b.length - 1].innerText.trim().length >= n; }",
            arg=len(expected.strip()),
            timeout=120_000,
        )
        assert bot.inner_text().strip() == expected.strip()
        page.screenshot(path=str(ARTIFACTS_DIR / "illume_demo_chat.png"), full_page=True)

        # An empty message is refused with a message in the page, not a crash.
        page.locator("#chat-send").click()
        page.get_by_text("Please enter a message.").wait_for(timeout=30_000)

        # Text to image at 256x256.
        page.get_by_role("tab", name="Text to image").click()
        page.locator("#t2i-prompt textarea").fill("a cat wearing a hat")
        page.locator("#t2i-resolution input").click()
        page.get_by_role("option", name="256x256").click()
        page.locator("#t2i-generate").click()
        page.locator("#t2i-output img").first.wait_for(timeout=180_000)
        page.screenshot(path=str(ARTIFACTS_DIR / "illume_demo_generate.png"), full_page=True)


def test_offered_sizes_follow_the_checkpoints_image_budget() -> None:
    from illume.serve.handlers import RESOLUTIONS, default_size, model_resolutions
    from illume.vocab import RATIOS

    released = model_resolutions(768 * 768)  # the released models' mm_vision_tower.max_pixels
    assert released == RESOLUTIONS and default_size(released) == (512, 512)
    assert model_resolutions(64 * 64) == ((64, 64),)  # the quick start's: its own trained size
    assert model_resolutions(300 * 300) == ((256, 256),)
    assert all(h * w <= 512 * 512 for h, w in model_resolutions(512 * 512))

    class QuickstartPipe:
        max_pixels = 64 * 64

    small = DemoHandlers(QuickstartPipe())
    assert small.resolution_choices(include_auto=True) == ["64x64"]  # no anchor fits: no "closest anchor"
    assert small.default_resolution() == small.default_resolution(include_auto=True) == "64x64"
    with pytest.raises(InputError, match="choose one of 64x64"):
        small.generate("a cat", "256x256")
    assert len(RATIOS) == 11


def test_app_passes_the_loading_and_decoding_switches(monkeypatch, tmp_path: Path) -> None:
    """`--no-generation-config`, `--quantize`, `--offload` reach the pipeline; `--speculative` the handlers."""
    from illume.serve import app

    loaded: dict = {}
    served: list[DemoHandlers] = []

    class Demo:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            return None

    def from_pretrained(model, **kwargs):
        loaded.update(kwargs, model=model)
        return object()

    monkeypatch.setattr(IllumePipeline, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(app, "build_demo", lambda handlers: served.append(handlers) or Demo())
    flags = ["--model", str(tmp_path), "--dualvitok", str(tmp_path), "--no-generation-config",
             "--quantize", "int8", "--offload", "--speculative", "none"]  # fmt: skip
    assert app.main(flags) == 0
    assert (loaded["use_generation_config"], loaded["quantize"], loaded["offload"]) == (False, "int8", True)
    assert served[0].speculative == "none"
    assert app.main(flags[:4]) == 0
    assert (loaded["use_generation_config"], loaded["quantize"], loaded["offload"]) == (True, "none", False)
    assert served[1].speculative == "jacobi"
