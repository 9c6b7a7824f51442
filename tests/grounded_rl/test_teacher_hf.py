"""The ``hf`` teacher backend on the tiny random Qwen2.5-VL (sampling, batching, seeds, stops, frames, prefills),
and the ``vllm`` backend's request mapping against a stand-in engine (vLLM itself cannot run here)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from PIL import Image

from trace_forge.errors import ConfigError
from trace_forge.grounding import Resize
from trace_forge.teachers import (
    ImageEncoder,
    ImageRef,
    Message,
    RuntimeConfig,
    SamplingParams,
    TeacherClient,
    base,
    make_teacher,
)
from trace_forge.teachers.hf import HFTeacher

CONFIG = RuntimeConfig(timeout_s=60.0, max_retries=0)


@pytest.fixture(scope="module")
def teacher(tiny_qwen2_5_vl_dir: Path) -> HFTeacher:
    t = make_teacher("hf", str(tiny_qwen2_5_vl_dir), device="cpu", batch_wait_s=0.05)
    assert isinstance(t, HFTeacher)
    return t


@pytest.fixture()
def calls(teacher: HFTeacher, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch size of every ``generate`` call the teacher makes during a test."""
    sizes: list[int] = []
    generate = teacher.vlm.generate

    def counting(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return generate(**kwargs)

    monkeypatch.setattr(teacher.vlm, "generate", counting)
    return sizes


def chat(text: str = "Where is the red square?", size: tuple[int, int] = (640, 480)) -> list[Message]:
    image = Image.new("RGB", size, "white")
    image.paste((255, 0, 0), (100, 100, 160, 160))
    return [Message("system", ("One step at a time.",)), Message("user", (ImageRef(image), text))]


def generate(teacher: HFTeacher, *requests: tuple[list[Message], SamplingParams]) -> list[list]:
    """Run the requests concurrently through one client, as the search does."""

    async def go():
        client = TeacherClient(teacher, CONFIG)
        return await asyncio.gather(*(client.generate(c, p) for c, p in requests))

    return list(asyncio.run(go()))


def test_n_samples_with_token_counts_and_finish_reasons(teacher: HFTeacher, calls: list[int]) -> None:
    [replies] = generate(teacher, (chat(), SamplingParams(n=2, max_tokens=12, seed=0)))
    assert len(replies) == 2 and calls == [1]  # n samples come from one call (num_return_sequences)
    assert replies[0].text != replies[1].text
    for r in replies:
        assert r.finish_reason in ("stop", "length") and 1 <= r.completion_tokens <= 12
        assert (r.finish_reason == "length") == (r.completion_tokens == 12)
    # One prompt, billed once: the shares add up to its length (system, ~192 image tokens, question).
    assert sum(r.prompt_tokens for r in replies) > 192


def test_concurrent_requests_share_one_batched_generate(teacher: HFTeacher, calls: list[int]) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=8)
    a, b = chat("Where is the red square?"), chat("Which colour is the square?", (300, 200))
    together = generate(teacher, (a, greedy), (b, greedy))
    assert calls == [2]  # two callers, one forward batch
    alone = generate(teacher, (a, greedy))
    assert calls == [2, 1]
    assert together[0][0].text == alone[0][0].text  # left padding does not change a row's greedy decoding
    # Different sampling parameters cannot share a generate call; both still get their replies.
    mixed = generate(teacher, (a, greedy), (b, SamplingParams(n=3, max_tokens=8)))
    assert [len(r) for r in mixed] == [1, 3] and calls[2:] == [1, 1]


def test_seeded_samples_depend_only_on_their_own_request(teacher: HFTeacher, calls: list[int]) -> None:
    """Whoever shares the batcher's window, a seeded sampling request draws the same texts as when alone."""
    params = SamplingParams(n=2, max_tokens=10, seed=7)
    alone = [r.text for r in generate(teacher, (chat(), params))[0]]
    other = chat("Which colour is the square?", (300, 200))
    unseeded = SamplingParams(n=2, max_tokens=10)
    crowd = generate(teacher, (other, SamplingParams(n=2, max_tokens=10, seed=8)), (chat(), params),
                     (other, unseeded), (chat(), unseeded))
    assert [r.text for r in crowd[1]] == alone
    # Seeded sampling runs alone (its own random stream); only the two unseeded requests may share a call.
    assert calls[0] == 1 and sum(calls[1:]) == 4 and max(calls[1:]) <= 2


def test_seed_makes_sampling_reproducible(teacher: HFTeacher) -> None:
    params = SamplingParams(n=2, max_tokens=10, seed=11)
    first = [r.text for r in generate(teacher, (chat(), params))[0]]
    again = [r.text for r in generate(teacher, (chat(), params))[0]]
    other = [r.text for r in generate(teacher, (chat(), SamplingParams(n=2, max_tokens=10, seed=12)))[0]]
    assert first == again and first != other


def test_greedy_n_copies_and_stop_strings_cut_the_text(teacher: HFTeacher) -> None:
    [replies] = generate(teacher, (chat(), SamplingParams(n=2, temperature=0, max_tokens=16)))
    assert replies[0].text == replies[1].text
    text = replies[0].text
    stop = next(ch for ch in text[2:] if ch.isprintable() and ch.strip())  # a character the model will write
    [[cut]] = generate(teacher, (chat(), SamplingParams(temperature=0, max_tokens=16, stop=(stop,))))
    assert cut.finish_reason == "stop" and cut.text == text[:text.index(stop)]
    assert cut.completion_tokens < replies[0].completion_tokens


def test_images_go_in_at_the_processor_resize_so_frames_match(teacher: HFTeacher) -> None:
    assert teacher.resize == Resize(min_pixels=56 * 56, max_pixels=256 * 28 * 28, factor=28)  # the tiny processor
    turns = chat()
    g = TeacherClient(teacher, CONFIG).geometry(turns[1].images[0])
    assert (g.width, g.height) == (640, 480) and (g.model_width, g.model_height) == (504, 364)
    # The processor leaves the sent image at that size: its patch grid covers exactly the model frame.
    inputs = teacher.processor(text=[teacher.render(turns)], images=[teacher._image(turns[1].images[0])])
    _, rows, cols = inputs["image_grid_thw"][0].tolist()
    patch = teacher.processor.image_processor.patch_size
    assert (cols * patch, rows * patch) == (504, 364)
    with pytest.raises(ConfigError, match="resized again"):
        make_teacher("hf", teacher.model, encoder=ImageEncoder(Resize(max_pixels=10**7)))


def test_a_file_the_processor_only_rounds_goes_as_it_is_and_lands_in_the_same_frame(teacher: HFTeacher,
                                                                                     tmp_path: Path) -> None:
    patch = teacher.processor.image_processor.patch_size
    for size, as_is in (((300, 200), True), ((640, 480), False)):  # rounded to 308x196; scaled into the budget
        path = tmp_path / f"{size[0]}.jpg"
        chat(size=size)[1].images[0].source.save(path, quality=90)
        ref = ImageRef(path)
        encoded = teacher.encoder.encode(ref)
        assert (encoded.data == path.read_bytes()) is as_is
        assert encoded.model_size == teacher.resize.model_size(*size) and (size == encoded.model_size) is False
        # The processor (vLLM serves with the same one) makes the encoder's model frame of what was sent.
        inputs = teacher.processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[teacher._image(ref)])
        _, rows, cols = inputs["image_grid_thw"][0].tolist()
        assert (cols * patch, rows * patch) == encoded.model_size

def test_prefill_is_continued_and_tool_turns_render_as_tool_responses(teacher: HFTeacher) -> None:
    crop = Image.new("RGB", (64, 64), "red")
    turns = [*chat(), Message("assistant", ('<think> Zoom. </think>\n<tool_call>{"name": "zoom"}</tool_call>',)),
             Message("tool", (ImageRef(crop), "Here is the crop.")), Message("assistant", ("<think> The",))]
    prompt = teacher.render(turns)
    assert prompt.endswith("<think> The")  # the last assistant turn is continued, not closed
    assert "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>Here is the crop." in prompt
    [[reply]] = generate(teacher, (turns, SamplingParams(max_tokens=4, seed=0)))
    [[plain]] = generate(teacher, (chat(), SamplingParams(max_tokens=4, seed=0)))
    assert reply.prompt_tokens > plain.prompt_tokens + 64  # the crop's visual tokens and the earlier turns


def test_a_given_chat_template_replaces_the_checkpoints(tiny_qwen2_5_vl_dir: Path) -> None:
    own = make_teacher("hf", str(tiny_qwen2_5_vl_dir), device="cpu")
    given = make_teacher("hf", str(tiny_qwen2_5_vl_dir), device="cpu",
                         chat_template="{% for m in messages %}[{{ m.role }}]{% endfor %}")
    assert given.render(chat()) == "[system][user]" and own.render(chat()).startswith("<|im_start|>system")
    assert "chat_template_sha256" in given.describe() and "chat_template_sha256" not in own.describe()


class FakeLLM:
    """Stands in for ``vllm.LLM``: records each ``chat`` call and answers sample ``j`` of a conversation of ``m``
    messages with ``reply m.j`` (callers of one batch may arrive in either order)."""

    instances: list[FakeLLM] = []

    def __init__(self, model: str, **kwargs) -> None:
        self.model, self.kwargs, self.calls = model, kwargs, []
        FakeLLM.instances.append(self)

    def chat(self, conversations, sampling_params, **kwargs):
        self.calls.append((conversations, sampling_params, kwargs))
        return [
            SimpleNamespace(prompt_token_ids=[0] * 10, outputs=[
                SimpleNamespace(index=j, text=f"reply {len(c)}.{j}", finish_reason="stop", token_ids=[1, 2, 3])
                for j in reversed(range(p.kwargs["n"]))  # out of order: the backend sorts by index
            ])
            for c, p in zip(conversations, sampling_params, strict=True)
        ]


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    """A stand-in ``vllm`` module, and a backend module and registry entry that are dropped again afterwards."""
    fake = ModuleType("vllm")
    fake.LLM, fake.__version__ = FakeLLM, "fake"
    fake.SamplingParams = lambda **kwargs: SimpleNamespace(kwargs=kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(base, "_BACKENDS", {k: v for k, v in base._BACKENDS.items() if k != "vllm"})
    saved = sys.modules.pop("trace_forge.teachers.vllm", None)
    yield
    sys.modules.pop("trace_forge.teachers.vllm", None)
    if saved is not None:
        sys.modules["trace_forge.teachers.vllm"] = saved


def test_vllm_backend_batches_chats_into_one_engine_call(tiny_qwen2_5_vl_dir: Path, fake_vllm: None) -> None:
    teacher = make_teacher("vllm", str(tiny_qwen2_5_vl_dir), max_images=3, batch_wait_s=0.05,
                           engine_args={"gpu_memory_utilization": 0.5}, chat_template="{{ messages }}")
    [llm] = FakeLLM.instances
    assert llm.kwargs == {"enable_prefix_caching": True, "limit_mm_per_prompt": {"image": 3},
                          "trust_remote_code": False, "gpu_memory_utilization": 0.5}
    assert teacher.resize == Resize(min_pixels=56 * 56, max_pixels=256 * 28 * 28, factor=28)

    crop = Message("tool", (ImageRef(Image.new("RGB", (32, 32))), "Here is the crop."))
    first = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=30, stop=("</think>",), seed=5, top_k=20)
    replies = generate(teacher, (chat(), first), ([*chat("Zoomed."), crop], SamplingParams(max_tokens=9)))
    [(conversations, params, kwargs)] = llm.calls  # two callers, one engine call
    assert [r.text for r in replies[0]] == ["reply 2.0", "reply 2.1"] and replies[1][0].text == "reply 3.0"
    assert sum(r.prompt_tokens for r in replies[0]) == 10 and replies[0][0].completion_tokens == 3
    # The batch holds the callers in arrival order; look each one up by its conversation.
    order = sorted(range(2), key=lambda i: len(conversations[i]))
    conversations, params = [conversations[i] for i in order], [params[i] for i in order]
    assert params[0].kwargs == {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 30, "stop": ["</think>"],
                                "seed": 5, "top_k": 20}
    assert "top_k" not in params[1].kwargs and "repetition_penalty" not in params[1].kwargs
    assert kwargs == {"use_tqdm": False, "chat_template": "{{ messages }}", "add_generation_prompt": True,
                      "continue_final_message": False}
    image_part = conversations[0][1]["content"][0]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/png;base64,")
    tool_turn = conversations[1][-1]
    assert tool_turn["role"] == "user" and tool_turn["content"][0] == {"type": "text", "text": "<tool_response>\n"}

    generate(teacher, ([*chat(), Message("assistant", ("<think>",))], SamplingParams()))
    assert llm.calls[-1][2]["continue_final_message"] is True and llm.calls[-1][2]["add_generation_prompt"] is False
