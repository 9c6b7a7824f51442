"""``grounded-rl eval``: scripted API models with known scores, the zoom loop and its limit, resume, and the tiny
model on every bundled benchmark.

The scripted server (loopback fake of the OpenAI API) recognises each question by the exact image bytes the client
sends and the question text, and answers right or wrong by a rule the test knows, so expected scores are exact.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from grounded_rl.eval import (
    PROTOCOL_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    SUMMARY_MD,
    EvalConfig,
    evaluate,
)
from tests.trace_forge.fake_servers import FakeOpenAIServer, Request
from trace_forge.durable import read_records
from trace_forge.errors import ConfigError
from trace_forge.grounding import Frame, ImageGeometry, Point, Resize, parse_response
from trace_forge.tasks import AnswerKind, Sample, get_task, scoring
from trace_forge.tasks.prompts import NORM1000_HINT, prompts_for

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
DATA = {
    "vstar": (SAMPLES / "vstar", None),
    "screenspot-v2": (SAMPLES / "screenspot_v2", None),
    "screenspot-pro": (SAMPLES / "screenspot_pro", None),
    "sat2": (SAMPLES / "sat2", "val"),
    "blink": (SAMPLES / "blink", "val"),
}
FORCE_TEXT = prompts_for("option").student_force_answer()


def load(task: str, limit: int | None = None) -> list[Sample]:
    data_dir, split = DATA[task]
    return list(get_task(task).load(data_dir=data_dir, split=split, limit=limit))


def config(task: str, **kwargs) -> EvalConfig:
    data_dir, split = DATA[task]
    kwargs.setdefault("backend", "openai")  # the server's address is filled in by run()
    return EvalConfig(task=task, model="scripted", data_dir=str(data_dir), split=split, **kwargs)


# --- the scripted model ------------------------------------------------------------------------------------------


class Script:
    """Knows every question by (pixels of the image as sent, question text) and writes right or wrong answers."""

    def __init__(self, samples: list[Sample], max_pixels: int | None = None) -> None:
        resize = Resize(max_pixels=max_pixels) if max_pixels else None
        self.index: dict[tuple[str, str], tuple[int, Sample, ImageGeometry]] = {}
        for i, s in enumerate(samples):
            canvas = s.canvas()
            geometry = resize.geometry(*canvas.size) if resize else ImageGeometry(*canvas.size, *canvas.size)
            sent = canvas.resize((geometry.model_width, geometry.model_height), Image.Resampling.BICUBIC)
            key = (pixels(sent), prompts_for(s.answer_kind).question_text(s))
            assert key not in self.index
            self.index[key] = (i, s, geometry)

    def lookup(self, request: Request) -> tuple[int, Sample, ImageGeometry]:
        image = Image.open(io.BytesIO(request.images[0])).convert("RGB")
        return self.index[(pixels(image), request.texts[1])]  # texts: system, question, then later turns

    @staticmethod
    def answer(sample: Sample, geometry: ImageGeometry, right: bool, frame: Frame = Frame.MODEL) -> str:
        """A well-formed single-turn response, right or wrong, in ``frame`` of the image as sent."""
        if sample.answer_kind is AnswerKind.POINT:
            target = sample.target_boxes[0].center if right else outside(sample)
            x, y = target.to(frame, geometry).x, target.to(frame, geometry).y
            # Exact (fractional) sent-frame coordinates: the official reader accepts them, so rounding in a
            # downscaled frame cannot push a point out of a small box.
            return f"<think>\nThe target is at ({round(x)}, {round(y)}).\n</think>\n<answer> ({x:.3f}, {y:.3f}) </answer>"
        chosen = sample.answer if right else next(o for o in sample.options if o != sample.answer)
        return f"<think>\nI look at (10, 12).\n</think>\n<answer> {chosen} </answer>"


def pixels(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def outside(sample: Sample) -> Point:
    """A pixel of the canvas inside no target box."""
    w, h = sample.canvas().size
    point = next(Point(x, y) for x in range(0, w, 7) for y in range(0, h, 7)
                 if not any(b.contains(Point(x, y)) for b in sample.target_boxes))
    return point


class Killed(Exception):
    """Stands for the process being killed between two records."""


def right_rule(index: int, k: int) -> bool:
    """Question i, sample k is answered right when (i + k) % 3 == 0: questions differ, samples of one differ."""
    return (index + k) % 3 == 0


def serve(script: Script, rule: Callable[[int, int], bool] = right_rule, frame: Frame = Frame.MODEL) -> FakeOpenAIServer:
    def reply(request: Request, k: int) -> str:
        i, sample, geometry = script.lookup(request)
        return script.answer(sample, geometry, rule(i, k), frame)

    return FakeOpenAIServer(reply_text=reply)


def run(cfg: EvalConfig, server: FakeOpenAIServer, out: Path, **kwargs) -> dict:
    cfg.base_urls = [server.base_url]
    return evaluate(cfg, out, **kwargs)


# --- independent re-computation from samples.jsonl ---------------------------------------------------------------


def rescore(task_name: str, samples: list[Sample], out: Path) -> list[dict]:
    """Every record's score equals the verifier applied to its saved final text (re-parsed here)."""
    task = get_task(task_name)
    by_id = {s.id: s for s in samples}
    records = list(read_records(out / SAMPLES_FILE))
    for r in records:
        sample = by_id[r["question_id"]]
        frame = Frame(r["frame"])
        geometry = ImageGeometry(*r["geometry"])
        expect = "turn" if r["mode"] == "multi" else "single"
        answer = parse_response(r["turns"][-1]["text"], geometry=geometry, frame=frame, expect=expect).answer
        if sample.answer_kind is AnswerKind.POINT and answer is not None:
            xy = scoring.official_point(answer)  # the official reading and mapping: x * W / w
            answer = Point(*geometry.scale(*xy, frame, Frame.PIXEL)) if xy else None
        assert r["score"] == task.score(sample, answer), r
        assert r["answer"] == (parse_response(r["turns"][-1]["text"], expect=expect).answer)
    return records


def hand_metrics(task_name: str, samples: list[Sample], records: list[dict], k: int) -> tuple[dict, dict]:
    """avg@k and pass@k written out per benchmark: micro means, or unweighted means of cells where it uses them."""
    by_id = {s.id: s for s in samples}
    per_q: dict[str, list[float]] = {}
    for r in records:
        per_q.setdefault(r["question_id"], []).append(r["score"])
    assert all(len(v) == k for v in per_q.values())

    def table(value: Callable[[list[float]], float]) -> dict[str, float]:
        def cell(s: Sample) -> str:
            return f"{s.category}/{s.meta['data_type']}" if task_name == "screenspot-v2" else s.category

        groups: dict[str, list[float]] = {}
        for q, v in per_q.items():
            groups.setdefault(cell(by_id[q]), []).append(value(v))
        means = {g: sum(v) / len(v) for g, v in groups.items()}
        if task_name in ("screenspot-v2", "blink"):  # SeeClick's Average, BLINK's Total: unweighted over cells
            overall = sum(means.values()) / len(means)
        else:
            overall = sum(value(v) for v in per_q.values()) / len(per_q)
        if task_name == "screenspot-pro":  # also text / icon
            for t in ("text", "icon"):
                vals = [value(v) for q, v in per_q.items() if by_id[q].meta["ui_type"] == t]
                if vals:
                    means[t] = sum(vals) / len(vals)
        return {"overall": overall, **means}

    return table(lambda v: sum(v) / len(v)), table(lambda v: float(any(x == 1.0 for x in v)))


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert math.isclose(a[key], b[key], abs_tol=1e-12), key


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", ["sat2", "screenspot-v2"])
def test_scripted_api_scores_exactly(task_name: str, tmp_path: Path) -> None:
    samples = load(task_name)
    k = 2
    with serve(Script(samples)) as server:
        summary = run(config(task_name, samples=k), server, tmp_path)
        assert server.request_count == len(samples)  # one request per question, n = K
        assert {r.n for r in server.requests} == {k}
    for name in (SAMPLES_FILE, SUMMARY_FILE, SUMMARY_MD, PROTOCOL_FILE):
        assert (tmp_path / name).is_file()
    records = rescore(task_name, samples, tmp_path)
    assert len(records) == len(samples) * k
    expected = {(s.id, j): float(right_rule(i, j)) for i, s in enumerate(samples) for j in range(k)}
    assert {(r["question_id"], r["k"]): r["score"] for r in records} == expected
    avg, passed = hand_metrics(task_name, samples, records, k)
    assert_close(summary["metrics"][f"avg@{k}"], avg)
    assert_close(summary["metrics"][f"pass@{k}"], passed)
    assert 0 < avg["overall"] < passed["overall"] < 1
    assert summary["counts"]["samples"] == len(samples) * k
    assert summary["counts"]["answered"] == len(samples) * k
    p = summary["protocol"]
    assert (p["decoding"]["temperature"], p["samples"], p["mode"], p["backend"]) == (0.5, k, "single", "openai")
    assert p["coordinates"] == {"frame": "model", "resize": None, "coordinate_hint": None, "max_pixels": None}
    assert "| overall |" in (tmp_path / SUMMARY_MD).read_text()


def test_api_points_converted_from_the_sent_frame(tmp_path: Path) -> None:
    """Images sent downscaled (max_pixels): the model answers in the small frame, scoring happens in pixels."""
    samples = load("screenspot-pro")
    with serve(Script(samples, max_pixels=200_000), rule=lambda i, k: True) as server:
        summary = run(config("screenspot-pro", max_pixels=200_000), server, tmp_path)
        sizes = {Image.open(io.BytesIO(r.images[0])).size for r in server.requests}
    assert all(w * h <= 200_000 for w, h in sizes)
    assert summary["metrics"]["avg@1"]["overall"] == 1.0
    rescore("screenspot-pro", samples, tmp_path)
    record = next(read_records(tmp_path / SAMPLES_FILE))
    g = ImageGeometry(*record["geometry"])
    assert (g.model_width, g.model_height) != (g.width, g.height)


def test_api_model_writing_norm1000_is_told_so_and_read_so(tmp_path: Path) -> None:
    """--frame norm1000 (e.g. a Qwen3-VL behind vLLM): the prompt asks for the 0-1000 grid and answers are read on
    it, whatever size the image was sent at."""
    samples = load("screenspot-pro")
    script = Script(samples, max_pixels=200_000)
    with serve(script, rule=lambda i, k: True, frame=Frame.NORM1000) as server:
        summary = run(config("screenspot-pro", max_pixels=200_000, frame="norm1000"), server, tmp_path)
        systems = {r.texts[0] for r in server.requests}
    assert all(NORM1000_HINT in text for text in systems)
    assert summary["metrics"]["avg@1"]["overall"] == 1.0
    coordinates = summary["protocol"]["coordinates"]
    assert (coordinates["frame"], coordinates["coordinate_hint"]) == ("norm1000", NORM1000_HINT)
    rescore("screenspot-pro", samples, tmp_path)
    # The same answers read as pixels of the sent image would miss (the grid is not the sent size).
    with serve(script, rule=lambda i, k: True, frame=Frame.NORM1000) as server:
        as_pixels = run(config("screenspot-pro", max_pixels=200_000), server, tmp_path / "model")
    assert as_pixels["metrics"]["avg@1"]["overall"] < 1.0


def zoom_calls(*points: tuple[int, int]) -> str:
    """One assistant turn calling zoom on each point, in order."""
    calls = "".join(f'\n<tool_call>\n{{"name": "zoom", "arguments": {{"point": [{x}, {y}]}}}}\n</tool_call>'
                    for x, y in points)
    return f"<think> Zoom on {len(points)} points. </think>{calls}"


@pytest.mark.parametrize("max_images", [5, 2])
def test_every_zoom_call_of_a_turn_is_served_in_order(tmp_path: Path, max_images: int) -> None:
    """Two calls in one turn get two tool replies (two crops), as in GRPO; past the image budget one is refused
    with the environment's text and the next turn must answer."""
    samples = load("vstar", limit=1)
    script = Script(samples)
    [sample] = samples
    canvas = sample.canvas()

    def reply(request: Request, k: int) -> str:
        _, sample_, geometry = script.lookup(request)
        if len(request.texts) == 2:  # first turn: zoom twice
            return zoom_calls((10, 12), (canvas.width - 20, canvas.height - 30))
        return script.answer(sample_, geometry, right=True).replace("\n", " ")

    with FakeOpenAIServer(reply_text=reply) as server:
        summary = run(config("vstar", multi_turn=True, limit=1, max_images=max_images), server, tmp_path)
        second = server.requests[1]
    [record] = rescore("vstar", samples, tmp_path)
    assert server.request_count == 2 and len(record["turns"]) == 2 and record["score"] == 1.0
    sent = "".join(second.texts)
    assert sent.count("<tool_response>") == 2  # one tool message per call
    observation = "Here is the zoomed crop of the image centred on"
    if max_images == 5:
        assert len(second.images) == 3 and sent.count(observation) == 2
        assert record["zooms"] == [[10, 12], [canvas.width - 20, canvas.height - 30]]  # in order
        assert not record["forced"]
    else:
        assert len(second.images) == 2 and record["zooms"] == [[10, 12]]
        assert sent.count(observation) == 1 and sent.index(observation) < sent.index("<tool_response>\nno more zooms")
        assert record["forced"] and summary["counts"]["refused_zooms"] == 1


def zoom_reply(point: tuple[int, int]) -> str:
    return f'<think> Zoom on ({point[0]}, {point[1]}). </think>\n<tool_call>\n{{"name": "zoom", "arguments": {{"point": [{point[0]}, {point[1]}]}}}}\n</tool_call>'


@pytest.mark.parametrize("frame", [Frame.MODEL, Frame.NORM1000])
def test_multi_turn_scripted_zoom_then_answer(tmp_path: Path, frame: Frame) -> None:
    samples = load("vstar", limit=2)
    script = Script(samples)

    def reply(request: Request, k: int) -> str:
        i, sample, geometry = script.lookup(request)
        if len(request.images) == 1:  # first turn: zoom on the target, in the frame the model is said to write
            return zoom_reply(sample.target_boxes[0].center.to(frame, geometry).rounded())
        answer = script.answer(sample, geometry, right=i % 2 == 0)
        return answer.replace("<think>\n", "<think> ").replace("\n</think>", " </think>")

    with FakeOpenAIServer(reply_text=reply) as server:
        summary = run(config("vstar", multi_turn=True, limit=2, frame=frame.value), server, tmp_path)
        second = [r for r in server.requests if len(r.images) == 2]
    assert server.request_count == 2 * len(samples)
    assert len(second) == len(samples)
    assert {Image.open(io.BytesIO(r.images[1])).size for r in second} == {(672, 672)}  # V* crops: 364 -> 672
    assert all("Here is the zoomed crop of the image centred on" in " ".join(r.texts) for r in second)
    records = rescore("vstar", samples, tmp_path)
    assert {r["question_id"]: r["score"] for r in records} == {s.id: float(i % 2 == 0) for i, s in enumerate(samples)}
    assert all(len(r["zooms"]) == 1 and len(r["turns"]) == 2 and not r["forced"] for r in records)
    by_id = {s.id: s for s in samples}
    for r in records:  # the zoom point is recorded in pixels: on the target
        assert by_id[r["question_id"]].target_boxes[0].contains(Point(*r["zooms"][0]))
    assert summary["protocol"]["zoom"] == {"max_images": 5, "max_turns": 5, "crop": 364, "out": 672, "dot": False,
                                           "forced_answer": "user_instruction"}


@pytest.mark.parametrize("answer_when_forced", [False, True])
def test_multi_turn_limit_forces_an_answer_after_four_crops(tmp_path: Path, answer_when_forced: bool) -> None:
    samples = load("screenspot-v2", limit=3)
    script = Script(samples)

    def reply(request: Request, k: int) -> str:
        _, sample, geometry = script.lookup(request)
        if answer_when_forced and FORCE_TEXT in request.texts:
            c = sample.target_boxes[0].center
            return f"<answer> ({round(c.x)}, {round(c.y)}) </answer>"
        n = len(request.images)
        return zoom_reply((20 * n, 30 * n))  # always zoom, on a new point each turn

    with FakeOpenAIServer(reply_text=reply) as server:
        summary = run(config("screenspot-v2", multi_turn=True, limit=3), server, tmp_path)
        images = sorted(len(r.images) for r in server.requests)
    assert images == sorted([1, 2, 3, 4, 5] * len(samples))  # 4 crops served, then one forced turn
    forced = [r for r in server.requests if FORCE_TEXT in r.texts]
    assert len(forced) == len(samples) and all(len(r.images) == 5 for r in forced)
    records = rescore("screenspot-v2", samples, tmp_path)
    assert all(r["forced"] and len(r["zooms"]) == 4 and len(r["turns"]) == 5 for r in records)
    assert summary["counts"]["forced_answers"] == len(samples)
    assert summary["metrics"]["avg@1"]["overall"] == (1.0 if answer_when_forced else 0.0)


def test_refused_zoom_is_the_tool_reply_and_turns_are_bounded(tmp_path: Path) -> None:
    def reply(request: Request, k: int) -> str:
        return zoom_reply((99999, 5))  # off the image: refused every time

    with FakeOpenAIServer(reply_text=reply) as server:
        summary = run(config("screenspot-v2", multi_turn=True, max_images=3, limit=1), server, tmp_path)
        texts = [" ".join(r.texts) for r in server.requests]
    assert server.request_count == 3 and all(len(r.images) == 1 for r in server.requests)
    assert "outside the image" in texts[1]
    assert summary["counts"]["refused_zooms"] == 2 and summary["counts"]["zooms"] == 0


def test_resume_after_kill_and_torn_line_gives_the_same_summary(tmp_path: Path) -> None:
    task, k = "screenspot-v2", 2
    samples = load(task)
    with serve(Script(samples)) as server:
        full = run(config(task, samples=k), server, tmp_path / "full")

        def stop_after_7(record: dict, done: int, total: int) -> None:
            if done == 7:
                raise Killed

        out = tmp_path / "resumed"
        with pytest.raises(Killed):
            run(config(task, samples=k, concurrency=1), server, out, on_record=stop_after_7)
        lines = (out / SAMPLES_FILE).read_bytes().splitlines(keepends=True)
        assert len(lines) == 7
        # A kill mid-write: the last line torn in half.
        (out / SAMPLES_FILE).write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    # The server restarted elsewhere (another port): where it lives is not part of the protocol.
    with serve(Script(samples)) as moved:
        resumed = run(config(task, samples=k), moved, out)
        # 6 complete records = 3 whole questions are skipped; the question of the torn record is asked again.
        assert moved.request_count == len(samples) - 3
    assert resumed["metrics"] == full["metrics"]
    assert resumed["counts"] == full["counts"]
    records = list(read_records(out / SAMPLES_FILE))
    assert sorted((r["question_id"], r["k"]) for r in records) == sorted((s.id, j) for s in samples for j in range(k))


def test_other_protocol_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    samples = load("vstar", limit=2)
    with serve(Script(samples)) as server:
        run(config("vstar", limit=2), server, tmp_path)
        with pytest.raises(ConfigError, match="decoding"):
            run(config("vstar", limit=2, temperature=1.0), server, tmp_path)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="samples"):
        config("vstar", samples=0)
    with pytest.raises(ConfigError, match="top_p"):
        config("vstar", top_p=0.0)
    with pytest.raises(ConfigError, match="max_pixels"):
        config("vstar", backend="hf", max_pixels=1000)
    with pytest.raises(ConfigError, match="frame='pixel'"):
        config("vstar", frame="pixel")
    with pytest.raises(ConfigError, match="frame is for API backends"):
        config("vstar", backend="hf", frame="norm1000")


# --- the tiny model, every benchmark ---------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", list(DATA))
def test_tiny_model_every_benchmark(task_name: str, tiny_model_dir, tmp_path: Path) -> None:
    family = "qwen3_vl" if task_name == "screenspot-pro" else "qwen2_5_vl"  # both frames: model and norm1000
    model = tiny_model_dir(family)
    cfg = config(task_name, limit=2, samples=2, max_tokens=16, backend="hf", multi_turn=task_name == "vstar")
    cfg.model = str(model)
    summary = evaluate(cfg, tmp_path)
    samples = load(task_name, limit=2)
    records = rescore(task_name, samples, tmp_path)
    assert len(records) == 4
    avg, passed = hand_metrics(task_name, samples, records, 2)
    assert_close(summary["metrics"]["avg@2"], avg)
    assert_close(summary["metrics"]["pass@2"], passed)
    expected_frame = "norm1000" if family == "qwen3_vl" else "model"
    assert {r["frame"] for r in records} == {expected_frame}
    assert summary["protocol"]["coordinates"]["frame"] == expected_frame
    assert summary["counts"]["truncated"] >= 1  # 16 random tokens rarely finish a turn
    assert re.search(r"\| overall \| \d+\.\d\d \|", (tmp_path / SUMMARY_MD).read_text())
    assert json.loads((tmp_path / PROTOCOL_FILE).read_text())["model"] == str(model)


@pytest.mark.parametrize(("task_name", "multi_turn"), [("sat2", False), ("vstar", True)])
def test_tiny_model_samples_do_not_depend_on_concurrency_or_resume(
    task_name: str, multi_turn: bool, tiny_qwen2_5_vl_dir, tmp_path: Path
) -> None:
    """A sample's texts depend on its seed alone: one question at a time, four at once (the local backend batches
    what arrives together), and a killed then resumed run all draw the same samples."""
    cfg = config(task_name, limit=3, samples=2, max_tokens=16, backend="hf", multi_turn=multi_turn, concurrency=1)
    cfg.model = str(tiny_qwen2_5_vl_dir)
    one = evaluate(cfg, tmp_path / "one")
    cfg.concurrency = 4
    evaluate(cfg, tmp_path / "four")

    def stop_after_3(record: dict, done: int, total: int) -> None:
        if done == 3:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        evaluate(cfg, out, on_record=stop_after_3)
    data = (out / SAMPLES_FILE).read_bytes()
    (out / SAMPLES_FILE).write_bytes(data[:-10])  # the third record torn
    resumed = evaluate(cfg, out)
    assert resumed["metrics"] == one["metrics"] and resumed["counts"] == one["counts"]

    def texts(path: Path) -> list:
        return sorted((r["question_id"], r["k"], [t["text"] for t in r["turns"]])
                      for r in read_records(path / SAMPLES_FILE))

    assert texts(tmp_path / "four") == texts(tmp_path / "one")
    assert texts(out) == texts(tmp_path / "one")


# A stock-style template that renders a tool result as a "tool" turn, unlike ours (a <tool_response> user turn).
FOREIGN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}"
    "{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_local_checkpoint_is_prompted_with_our_chat_template(
    tiny_qwen2_5_vl_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint shipping another chat template is evaluated with ours, and the protocol names it."""
    from grounded_rl.eval import make_client
    from grounded_rl.templates import chat_template
    from trace_forge.teachers import ImageRef, Message
    from trace_forge.teachers.hf import HFTeacher

    checkpoint = tmp_path / "foreign"
    shutil.copytree(tiny_qwen2_5_vl_dir, checkpoint)
    (checkpoint / "chat_template.jinja").write_text(FOREIGN_TEMPLATE, encoding="utf-8")
    cfg = config("sat2", limit=1, max_tokens=4, backend="hf")
    cfg.model = str(checkpoint)

    rendered: list[str] = []
    render = HFTeacher.render
    monkeypatch.setattr(HFTeacher, "render", lambda self, chat: rendered.append(render(self, chat)) or rendered[-1])
    summary = evaluate(cfg, tmp_path / "out")
    ours = hashlib.sha256(chat_template("qwen2_5_vl").encode()).hexdigest()
    assert summary["protocol"]["chat_template_sha256"] == ours
    assert rendered and all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n")
                            for p in rendered)

    crop = Image.new("RGB", (32, 32))
    dialog = [Message("user", ("Where?",)), Message("assistant", ("<think> Zoom. </think>",)),
              Message("tool", (ImageRef(crop), "Here is the crop."))]
    prompt = make_client(cfg).teacher.render(dialog)
    assert "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>Here is the crop." in prompt
    assert "<|im_start|>tool" not in prompt


@pytest.mark.parametrize("frame", [Frame.MODEL, Frame.NORM1000])
def test_cli_eval_writes_outputs_and_prints_the_table(tmp_path: Path, frame: Frame) -> None:
    from typer.testing import CliRunner

    from grounded_rl.cli import app

    samples = load("screenspot-v2", limit=3)
    with serve(Script(samples), rule=lambda i, k: i == 0, frame=frame) as server:
        result = CliRunner().invoke(app, [
            "eval", "--model", "scripted", "--task", "screenspot-v2", "--data-dir", str(DATA["screenspot-v2"][0]),
            "--limit", "3", "--backend", "openai", "--base-url", server.base_url, "--frame", frame.value,
            "--out", str(tmp_path),
        ])
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "summary.json" in result.output
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["counts"]["samples"] == 3
    assert sum(r["score"] for r in read_records(tmp_path / SAMPLES_FILE)) == 1.0


def test_a_generic_task_is_evaluated_with_its_column_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from grounded_rl.cli import app
    from tests.trace_forge.fixtures_trees import GENERIC_OPTIONS, write_generic_run

    _, sample = write_generic_run(tmp_path / "run", tmp_path / "data")
    data = tmp_path / "data" / "bench.jsonl"
    options = [arg for key, column in GENERIC_OPTIONS.items() for arg in ("-o", f"{key}={column}")]
    with serve(Script([sample]), rule=lambda i, k: True) as server:
        result = CliRunner().invoke(app, ["eval", "--task", "generic", *options, "--model", "scripted", "--backend",
                                          "openai", "--base-url", server.base_url, "--data-dir", str(data),
                                          "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "eval" / SUMMARY_FILE).read_text())
    assert summary["metrics"]["avg@1"] == {"overall": 1.0, "mapped": 1.0}  # its category column was mapped
    assert summary["protocol"]["task_options"] == GENERIC_OPTIONS
    without = CliRunner().invoke(app, ["eval", "--task", "generic", "--model", "m", "--backend", "openai",
                                       "--data-dir", str(data), "--out", str(tmp_path / "other")])
    assert isinstance(without.exception, ConfigError) and "column(s) not found" in str(without.exception)


def test_sat2_circular_protocol_reports_sats_accuracy_and_the_strict_share(tmp_path: Path) -> None:
    samples = list(get_task("sat2", circular=True).load(data_dir=DATA["sat2"][0], split="val"))
    questions = {s.meta["circular_group"] for s in samples}
    assert len(samples) > len(questions) >= 2
    # Right in every rotation of the first question, right in one rotation only of the others.
    first = sorted(questions)[0]
    rotation = {s.id: s.meta["rotation"] for s in samples}
    group = {s.id: s.meta["circular_group"] for s in samples}
    order = [s.id for s in samples]
    cfg = config("sat2", task_options={"circular": True})
    with serve(Script(samples), rule=lambda i, k: group[order[i]] == first or rotation[order[i]] == 0) as server:
        summary = run(cfg, server, tmp_path)
    metrics = summary["metrics"]["avg@1"]
    items = [group[q] == first or rotation[q] == 0 for q in order]
    assert metrics["overall"] == pytest.approx(sum(items) / len(items))  # SAT's circular accuracy: rotations as items
    assert metrics["all_rotations"] == pytest.approx(1 / len(questions))
    assert metrics["questions"] == len(questions)
