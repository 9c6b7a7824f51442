"""The simulated teacher on the bundled samples, and the isolation of the vLLM backend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from trace_forge.errors import ConfigError
from trace_forge.grounding import Frame, Point, Resize, parse_response
from trace_forge.tasks import Sample, Task, get_task
from trace_forge.tasks.prompts import prompts_for
from trace_forge.teachers import (
    ImageRef,
    Message,
    SamplingParams,
    TeacherClient,
    TeacherRejected,
    base,
    build_client,
    make_teacher,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "samples"
# Smaller than the bundled images, so the teacher's frame (the image as sent) differs from the pixel frame.
RESIZE = Resize(max_pixels=300_000)


def load(task: str) -> tuple[Task, list[Sample]]:
    t = get_task(task)
    return t, list(t.load(DATA / task.replace("-", "_")))


@pytest.fixture(scope="module")
def vstar() -> tuple[Task, list[Sample]]:
    return load("vstar")


@pytest.fixture(scope="module")
def screenspot() -> tuple[Task, list[Sample]]:
    return load("screenspot-v2")


def sim_client(samples: list[Sample], **kwargs: float) -> TeacherClient:
    return build_client("sim", "sim", samples=samples, resize=RESIZE, **kwargs)


class Asker:
    """Builds the teacher requests the MCTS search sends, and reads the replies in the pixel frame."""

    def __init__(self, client: TeacherClient, sample: Sample) -> None:
        self.client = client
        self.sample = sample
        self.prompts = prompts_for(sample.answer_kind)
        self.image = ImageRef(sample.canvas())
        self.geometry = client.geometry(self.image)

    def chat(self, steps: tuple[Point, ...] = (), force: bool = False, min_steps: int | None = None) -> list[Message]:
        texts = [f"I look at {self._written(p)}." for p in steps]
        user: list[str | ImageRef] = [self.image, self.prompts.teacher_user(self.sample, texts)]
        if force:
            user.append("\n\n" + self.prompts.teacher_force_answer())
        system = self.prompts.teacher_system(min_steps=min_steps)
        return [Message("system", (system,)), Message("user", tuple(user))]

    def ask(self, n: int, seed: int = 0, **chat_args: object) -> list[str]:
        replies = asyncio.run(self.client.generate(self.chat(**chat_args), SamplingParams(n=n, seed=seed)))
        return [r.text for r in replies]

    def parse(self, text: str):
        return parse_response(text, geometry=self.geometry, frame=Frame.MODEL, expect="step")

    def in_target(self, point: Point) -> bool:
        pixel = point.to(Frame.PIXEL, self.geometry)
        return any(box.contains(pixel) for box in self.sample.target_boxes)

    def score(self, task: Task, answer: str) -> float:
        if self.sample.answer_kind.value == "point":
            parsed = self.parse(f"<answer> {answer} </answer>").answer_point
            return task.score(self.sample, parsed.to(Frame.PIXEL, self.geometry) if parsed else None)
        return task.score(self.sample, answer)

    def _written(self, pixel_point: Point) -> str:
        x, y = pixel_point.to(Frame.MODEL, self.geometry).rounded()
        return f"({x}, {y})"


def test_steps_are_well_formed_on_the_image_and_described(vstar, screenspot) -> None:
    for _, samples in (vstar, screenspot):
        client = sim_client(samples)
        for sample in samples[:6]:
            asker = Asker(client, sample)
            for text in asker.ask(n=6):
                parsed = asker.parse(text)
                assert parsed.ok, (text, parsed.problems)
                if parsed.answer is None:
                    [step] = parsed.steps
                    assert asker.geometry.contains(step.point.x, step.point.y, Frame.MODEL)
                    assert len(step.text.split()) >= 6  # a sentence about what it looks at, not a bare point
    assert client.teacher.describe()["simulated"] is True
    assert client.snapshot()["completion_tokens"] > 0 and client.snapshot()["prompt_tokens"] > 0


def test_replies_are_deterministic_and_samples_differ(vstar) -> None:
    _, samples = vstar
    first = Asker(sim_client(samples), samples[0]).ask(n=8, seed=3)
    again = Asker(sim_client(samples), samples[0]).ask(n=8, seed=3)
    other = Asker(sim_client(samples), samples[0]).ask(n=8, seed=4)
    assert first == again
    assert len(set(first)) >= 4 and first != other
    # The runtime asks for samples 1.. of n=8 with seed+1; each sample index keeps its own reply.
    assert Asker(sim_client(samples), samples[0]).ask(n=7, seed=4) == first[1:]


def step_points(asker: Asker, n: int, seeds: range) -> list[Point]:
    points = []
    for seed in seeds:
        for text in asker.ask(n=n, seed=seed, min_steps=1):  # min_steps: depth 0 is always a step
            [step] = asker.parse(text).steps
            points.append(step.point)
    return points


@pytest.mark.parametrize("fixture", ["vstar", "screenspot"])
def test_skill_decides_how_often_steps_hit_the_target(fixture: str, request: pytest.FixtureRequest) -> None:
    _, samples = request.getfixturevalue(fixture)
    for sample in samples[:4]:
        skilled = Asker(sim_client(samples, skill=1.0), sample)
        assert all(skilled.in_target(p) for p in step_points(skilled, 10, range(2)))
        clumsy = Asker(sim_client(samples, skill=0.0), sample)
        hits = [clumsy.in_target(p) for p in step_points(clumsy, 10, range(2))]
        assert sum(hits) <= 0.2 * len(hits)


def test_forced_requests_answer_and_answers_follow_depth_and_min_steps(vstar) -> None:
    _, samples = vstar
    asker = Asker(sim_client(samples, skill=0.0), samples[0])
    assert all(asker.parse(t).answer for t in asker.ask(n=20, force=True))
    assert not any(asker.parse(t).answer for t in asker.ask(n=20, min_steps=3, steps=(Point(5, 5), Point(9, 9))))

    def answer_rate(depth: int) -> float:
        steps = tuple(Point(10 + 7 * k, 10 + 5 * k) for k in range(depth))
        texts = [t for seed in range(5) for t in asker.ask(n=20, seed=seed, steps=steps)]
        return sum(asker.parse(t).answer is not None for t in texts) / len(texts)

    assert answer_rate(0) < 0.25 < answer_rate(4)


@pytest.mark.parametrize("fixture", ["vstar", "screenspot"])
def test_answers_are_right_at_about_answer_accuracy_and_more_after_a_hit(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    task, samples = request.getfixturevalue(fixture)
    client = sim_client(samples, answer_accuracy=0.6, hit_bonus=0.3)

    def accuracy(after_hit: bool) -> float:
        scores = []
        for sample in samples[:10]:
            asker = Asker(client, sample)
            steps = (sample.target_boxes[0].center,) if after_hit else ()
            scores += [asker.score(task, asker.parse(t).answer) for t in asker.ask(n=40, force=True, steps=steps)]
        return sum(scores) / len(scores)

    assert 0.5 <= accuracy(after_hit=False) <= 0.7
    assert 0.8 <= accuracy(after_hit=True) <= 0.97


def test_unknown_question_and_bad_settings_are_errors(vstar, screenspot) -> None:
    client = sim_client(vstar[1])
    with pytest.raises(TeacherRejected, match="none of its 10 samples"):
        Asker(client, screenspot[1][0]).ask(n=1)
    with pytest.raises(ConfigError, match="needs the questions' ground truth"):
        make_teacher("sim", "sim")
    with pytest.raises(ConfigError, match="skill=1.5"):
        make_teacher("sim", "sim", samples=vstar[1], skill=1.5)


def test_latency_is_simulated(vstar) -> None:
    client = sim_client(vstar[1], latency_s=0.05)
    Asker(client, vstar[1][0]).ask(n=2)
    assert client.usage.latencies[0] >= 0.05


def test_vllm_without_vllm_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, whatever this machine has
    monkeypatch.delitem(sys.modules, "trace_forge.teachers.vllm", raising=False)
    monkeypatch.setattr(base, "_BACKENDS", {k: v for k, v in base._BACKENDS.items() if k != "vllm"})
    with pytest.raises(ConfigError, match="'vllm' extra"):
        make_teacher("vllm", "Qwen/Qwen2.5-VL-7B-Instruct")


def test_teachers_sim_and_openai_never_import_vllm_or_torch() -> None:
    code = f"""
import asyncio, sys
from trace_forge.tasks import get_task
from trace_forge.teachers import ImageRef, Message, SamplingParams, build_client, make_teacher
samples = list(get_task("vstar").load({str(DATA / "vstar")!r}, limit=1))
client = build_client("sim", "sim", samples=samples)
chat = [Message("user", (ImageRef(samples[0].canvas()), samples[0].question))]  # matched by its image alone
asyncio.run(client.generate(chat, SamplingParams()))
make_teacher("openai", "m", ["http://127.0.0.1:9/v1"])
print(sorted(m for m in ("vllm", "torch", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unreadable_image_fails_only_its_own_question(screenspot, tmp_path: Path) -> None:
    """Two questions share one instruction (told apart by their images); the other's image is corrupt. The sim
    teacher still answers the readable one."""
    _, samples = screenspot
    good = samples[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    twin = Sample(f"{good.id}-twin", good.task, [str(broken)], good.question, good.answer_kind,
                  target_boxes=good.target_boxes)
    client = sim_client([twin, good])
    texts = Asker(client, good).ask(n=2)
    assert len(texts) == 2 and all(parse_response(t, expect="step").ok for t in texts)
