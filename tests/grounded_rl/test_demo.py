"""``grounded-rl demo``: one question through the eval student, drawn with trace-forge's renderer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from grounded_rl.cli import app
from grounded_rl.demo import DemoConfig, run_demo
from tests.trace_forge.fake_servers import FakeOpenAIServer, Request
from trace_forge.errors import ConfigError
from trace_forge.grounding import Frame, ImageGeometry, Point
from trace_forge.tasks.prompts import NORM1000_HINT

TARGET = (150, 90)


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    image = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(image).ellipse((140, 80, 160, 100), fill="red")
    path = tmp_path / "scene.png"
    image.save(path)
    return path


def scripted(request: Request, k: int) -> str:
    """Zoom on the red dot first, then answer with it."""
    if len(request.images) == 1:
        return (f"<think> A red dot ({TARGET[0]}, {TARGET[1]}). </think>\n<tool_call>\n"
                f'{{"name": "zoom", "arguments": {{"point": [{TARGET[0]}, {TARGET[1]}]}}}}\n</tool_call>')
    return f"<think> The crop shows the dot (160, 100). </think>\n<answer> ({TARGET[0]}, {TARGET[1]}) </answer>"


def test_multi_turn_demo_draws_steps_and_crops(picture: Path, tmp_path: Path) -> None:
    with FakeOpenAIServer(reply_text=scripted) as server:
        common = dict(model="scripted", image=str(picture), query="Where is the red dot?", task_kind="point",
                      backend="openai", base_urls=[server.base_url])
        dialog, out = run_demo(DemoConfig(out=str(tmp_path / "mt.png"), multi_turn=True, **common))
        crop_sent = Image.open(io.BytesIO(server.requests[1].images[1]))
        _, flat = run_demo(DemoConfig(out=str(tmp_path / "st.png"), **common))
    assert [len(t.parsed.steps) for t in dialog.turns] == [1, 1]
    assert len(dialog.crops) == 1 and dialog.crops[0].size == crop_sent.size == (384, 384)  # GUI zoom for points
    assert dialog.answer == f"({TARGET[0]}, {TARGET[1]})"
    assert all(s.point.frame is Frame.PIXEL for s in dialog.pixel_steps())
    drawn, single = Image.open(out), Image.open(flat)
    assert drawn.width > 320 and drawn.height > single.height  # the crop strip sits below the image and panel
    assert drawn.getpixel((TARGET[0], TARGET[1])) != (255, 0, 0)  # a numbered marker covers the dot


def test_demo_reads_a_served_model_on_the_norm1000_grid(picture: Path, tmp_path: Path) -> None:
    """--frame norm1000: the model is asked for 0-1000 coordinates, and its zoom and answer land on the dot."""
    x, y = Point(*TARGET).to(Frame.NORM1000, ImageGeometry(320, 240, 320, 240)).rounded()

    def grid(request: Request, k: int) -> str:
        return scripted(request, k).replace(f"{TARGET[0]}, {TARGET[1]}", f"{x}, {y}")

    with FakeOpenAIServer(reply_text=grid) as server:
        dialog, _ = run_demo(DemoConfig(model="scripted", image=str(picture), query="Where is the red dot?",
                                        task_kind="point", backend="openai", base_urls=[server.base_url],
                                        frame="norm1000", multi_turn=True, out=str(tmp_path / "grid.png")))
        system = server.requests[0].texts[0]
    assert NORM1000_HINT in system
    assert dialog.answer == f"({x}, {y})"
    for point in (dialog.zooms[0], dialog.pixel_steps()[0].point):
        assert abs(point.x - TARGET[0]) <= 1 and abs(point.y - TARGET[1]) <= 1


def test_demo_with_the_tiny_model(tiny_qwen2_5_vl_dir: Path, picture: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "demo", "--model", str(tiny_qwen2_5_vl_dir), "--image", str(picture), "--query", "Which colour is the dot?",
        "--task-kind", "option", "--choice", "red", "--choice", "blue", "--max-tokens", "12", "--multi-turn",
        "--out", str(tmp_path / "demo.png"),
    ])
    assert result.exit_code == 0, result.output
    assert "turn 1" in result.output and "answer:" in result.output
    assert Image.open(tmp_path / "demo.png").width > 320


def test_demo_options_are_checked(picture: Path) -> None:
    with pytest.raises(ConfigError, match="two --choice"):
        DemoConfig(model="m", image=str(picture), query="q", out="o.png", task_kind="option", options=["red"])
    with pytest.raises(ConfigError, match="--choice is for"):
        DemoConfig(model="m", image=str(picture), query="q", out="o.png", task_kind="text", options=["red"])
