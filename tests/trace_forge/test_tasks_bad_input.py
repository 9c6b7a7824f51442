"""Bad benchmark input in every loader: one ``DataError`` naming the file (and line), or with ``skip_bad`` a skip
counted under its reason. Decompression bombs, text that is not UTF-8, duplicate ids, target boxes that cannot be
hit, and a ScreenSpot-Pro ``img_size`` of another shape than its screenshot."""

import base64
import json
import struct
import subprocess
import sys
import zlib
from collections import Counter

import pytest

from tests.trace_forge.test_tasks_hrbench import COLUMNS as HR_COLUMNS
from tests.trace_forge.test_tasks_hrbench import hr_row
from tests.trace_forge.test_tasks_loaders import (
    GENERIC_MAP,
    make_generic,
    make_pro,
    make_vstar,
    pro_item,
    save_image,
    write_json,
)
from tests.trace_forge.test_tasks_vlmeval import write_tsv
from trace_forge.errors import DataError
from trace_forge.tasks import get_task
from trace_forge.tasks.io import MAX_IMAGE_PIXELS_ENV, ImageTooLarge, open_image

LIMIT_HINT = f"allow it with {MAX_IMAGE_PIXELS_ENV}="


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width x height`` pixels: what a decompression bomb shows a
    reader before it is decoded (its pixel data, never decoded here, is a stub)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


# 400 megapixels: past twice the default limit, where PIL itself refuses; 100 megapixels: over our limit only.
BOMBS = {"pil_refuses": (20_000, 20_000), "over_the_limit": (10_000, 10_000)}


@pytest.mark.parametrize("size", list(BOMBS.values()), ids=list(BOMBS))
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets the filter io.py sets
def test_a_decompression_bomb_is_refused_by_every_loader_with_a_way_to_allow_it(tmp_path, size):
    bomb = png_header(*size)
    # V*: a JSON file per question, the image beside it.
    vstar = make_vstar(tmp_path / "vstar")
    (vstar / "relative_position" / "sa_2.jpg").write_bytes(bomb)
    # ScreenSpot-Pro: annotation lists, images under images/.
    pro = make_pro(tmp_path / "pro")
    (pro / "images" / "vscode_macos" / "screenshot_1.png").write_bytes(bomb)
    # HR-Bench: base64 images inside a TSV.
    hr = tmp_path / "hr"
    write_tsv(hr / "hr_bench_4k.tsv", [hr_row(0), hr_row(1, image=base64.b64encode(bomb).decode())], HR_COLUMNS)
    # generic: JSONL rows naming image files.
    generic = make_generic(tmp_path / "generic")
    (tmp_path / "generic" / "imgs" / "a.png").write_bytes(bomb)
    cases = [("vstar", {}, vstar, r"sa_2\.json"), ("screenspot-pro", {}, pro, r"vscode_macos\.json: record 0"),
             ("hrbench-4k", {}, hr, r"hr_bench_4k\.tsv:3"), ("generic", GENERIC_MAP, generic, r"bench\.jsonl:1")]
    for name, options, data, where in cases:
        with pytest.raises(DataError, match=rf"{where}: .*over the limit of 89,478,485") as raised:
            list(get_task(name, **options).load(data))
        assert LIMIT_HINT in str(raised.value) and "\n" not in str(raised.value)
        task = get_task(name, **options)
        list(task.load(data, skip_bad=True))
        assert task.skipped["image over the pixel limit"] >= 1, name


def test_the_pixel_limit_is_set_by_an_environment_variable(tmp_path, monkeypatch):
    vstar = make_vstar(tmp_path)
    (vstar / "relative_position" / "sa_2.jpg").write_bytes(png_header(20_000, 20_000))
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "0")  # no limit: the header is read, nothing decoded
    assert len(list(get_task("vstar").load(vstar))) == 2
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1000")  # the 64 x 48 picture (3072 pixels) is now too large
    with pytest.raises(DataError, match="3,072 pixels is over the limit of 1,000"):
        list(get_task("vstar").load(vstar))
    with pytest.raises(ImageTooLarge):
        open_image(vstar / "direct_attributes" / "sa_10.jpg")  # where images are decoded, too
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "many")
    with pytest.raises(Exception, match=rf"{MAX_IMAGE_PIXELS_ENV}='many': need a whole number"):
        list(get_task("vstar").load(vstar))


def test_cli_reports_a_bomb_in_one_line_with_exit_2(tmp_path):
    vstar = make_vstar(tmp_path)
    (vstar / "relative_position" / "sa_2.jpg").write_bytes(png_header(20_000, 20_000))
    result = subprocess.run([sys.executable, "-m", "trace_forge.cli", "tasks", "show", "vstar", "--data-dir",
                             str(vstar)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sa_2.json" in lines[0], result.stderr


def test_text_that_is_not_utf8_names_file_and_line(tmp_path):
    latin1 = "Quelle couleur a le chapeau \xe9t\xe9 ?".encode("latin-1")
    # JSONL: the line is a bad record, skippable.
    path = make_generic(tmp_path / "jsonl")
    first, second = path.read_bytes().splitlines()
    path.write_bytes(first + b"\n" + second.replace(b"Same?", latin1) + b"\n")
    with pytest.raises(DataError, match=r"bench\.jsonl:2: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        list(get_task("generic", **GENERIC_MAP).load(path))
    task = get_task("generic", **GENERIC_MAP)
    assert [s.id for s in task.load(path, skip_bad=True)] == ["q1"]
    assert task.skipped == Counter({"not UTF-8": 1})
    # A JSON file per question (V*): that question is a bad record.
    vstar = make_vstar(tmp_path / "vstar")
    json_path = vstar / "relative_position" / "sa_2.json"
    json_path.write_bytes(json_path.read_bytes().replace(b"Is the cup", b"\n" + latin1))
    with pytest.raises(DataError, match=r"sa_2\.json:2: not UTF-8 text"):
        list(get_task("vstar").load(vstar))
    task = get_task("vstar")
    assert [s.id for s in task.load(vstar, skip_bad=True)] == ["direct_attributes/sa_10"]
    # A JSON list (ScreenSpot-Pro): the whole file is unreadable.
    pro = make_pro(tmp_path / "pro")
    listing = pro / "annotations" / "vscode_macos.json"
    listing.write_bytes(listing.read_bytes().replace(b"click target 0", latin1))
    with pytest.raises(DataError, match=r"vscode_macos\.json:1: not UTF-8 text"):
        list(get_task("screenspot-pro").load(pro))


def test_duplicate_question_ids_are_refused_or_skipped(tmp_path):
    path = make_generic(tmp_path)
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n" + second.replace('"q2"', '"q1"') + "\n")
    with pytest.raises(DataError, match=r"bench\.jsonl:2: duplicate question id 'q1' \(first at .*bench\.jsonl:1\)"):
        list(get_task("generic", **GENERIC_MAP).load(path))
    task = get_task("generic", **GENERIC_MAP)
    (kept,) = task.load(path, skip_bad=True)
    assert kept.question == "Which colour?" and task.skipped == Counter({"duplicate id": 1})


@pytest.mark.parametrize(("box", "reason", "message"), [
    ([100, 100, 120, 120], "box outside the image", r"lies outside the 64 x 48 image"),
    ([-30, 5, -10, 9], "box outside the image", r"lies outside the 64 x 48 image"),
    ([10, 10, 10, 20], "empty box", r"\[10, 10, 10, 20\] .* has no area"),
    ([10, float("nan"), 20, 20], "box not finite", r"\[10, nan, 20, 20\] .* is not finite"),
])
def test_target_boxes_that_cannot_be_hit_are_refused(tmp_path, box, reason, message):
    save_image(tmp_path / "imgs" / "a.png", (64, 48))
    rows = [{"uid": "ok", "img": "imgs/a.png", "q": "Click the dot", "bb": [60, 40, 70, 50]},  # partly inside: kept
            {"uid": "bad", "img": "imgs/a.png", "q": "Click the cat", "bb": box}]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN as the literal Python reads
    options = dict(id="uid", image="img", question="q", boxes="bb", answer_kind="point")
    with pytest.raises(DataError, match=rf"bench\.jsonl:2: question 'bad': target box .*{message}"):
        list(get_task("generic", **options).load(path))
    task = get_task("generic", **options)
    assert [s.id for s in task.load(path, skip_bad=True)] == ["ok"]
    assert task.skipped == Counter({reason: 1})


def test_screenspot_pro_img_size_of_another_shape_is_refused(tmp_path):
    root = make_pro(tmp_path)
    # The 96 x 54 vscode screenshot annotated as a square screen: its boxes would land elsewhere.
    write_json(root / "annotations" / "vscode_macos.json",
               [pro_item("vscode_macos", 0, [10, 20, 30, 40], [96, 96], "text", "Dev")])
    with pytest.raises(DataError, match=r"vscode_macos\.json: record 0: img_size \[96, 96\] disagrees with the image "
                                        r"\(96 x 54"):
        list(get_task("screenspot-pro").load(root))
    task = get_task("screenspot-pro")
    assert [s.id for s in task.load(root, skip_bad=True)] == ["autocad_windows_0", "autocad_windows_1"]
    assert task.skipped == Counter({"img_size disagrees with the image": 1})
    # A box annotated on the file's own size but beyond it still fails as a box outside the image.
    write_json(root / "annotations" / "vscode_macos.json",
               [pro_item("vscode_macos", 0, [100, 60, 120, 70], [96, 54], "text", "Dev")])
    with pytest.raises(DataError, match="lies outside the 96 x 54 image"):
        list(get_task("screenspot-pro").load(root))


def test_every_loader_goes_through_the_checks():
    """The checks live in Task.load; a task reads its layout in ``read`` (SAT-2 only expands its rotations after)."""
    from trace_forge.tasks import Task, task_names
    from trace_forge.tasks.sat import SAT2

    for name in task_names():
        cls = type(get_task(name))
        assert cls.load is Task.load or cls is SAT2, name


def test_search_skips_and_counts_bad_records_with_skip_bad(tmp_path):
    from typer.testing import CliRunner

    from trace_forge.cli import app

    data = make_vstar(tmp_path / "vstar")
    (data / "relative_position" / "sa_2.jpg").write_bytes(png_header(20_000, 20_000))
    args = ["search", "--task", "vstar", "--data-dir", str(data), "--teacher", "sim", "--simulations", "1", "--quiet",
            "--no-linearize"]
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert isinstance(refused.exception, DataError) and "sa_2.json" in str(refused.exception)
    skipped = CliRunner().invoke(app, [*args, "--skip-bad", "--out", str(tmp_path / "run")])
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1 bad record(s) (image over the pixel limit: 1)" in " ".join(skipped.output.split())
