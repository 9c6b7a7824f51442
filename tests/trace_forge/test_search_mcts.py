"""The MCTS engine end to end through the real OpenAI client against a scripted loopback teacher."""

import asyncio
import hashlib
import json

import pytest

from tests.trace_forge.fake_servers import FakeOpenAIServer
from trace_forge.search.mcts import QuestionSearch, SearchConfig, run_search
from trace_forge.search.store import RunStore
from trace_forge.search.tree import Tree
from trace_forge.tasks import get_task
from trace_forge.tasks.prompts import prompts_for
from trace_forge.teachers import RuntimeConfig, build_client

SAMPLES = "data/samples/vstar"
FORCE = prompts_for("option").teacher_force_answer()


@pytest.fixture(scope="module")
def task_and_samples():
    task = get_task("vstar")
    return task, list(task.load(SAMPLES))


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:6], "big")


def scripted_teacher(samples, *, same_point=False):
    """A deterministic stand-in for a teacher VLM, answering from the request alone (like a seeded server)."""
    by_question = {s.question: s for s in samples}

    def reply(req, i):
        text = "\n".join(req.texts)
        sample = next(s for q, s in by_question.items() if q in text)
        depth = text.count("Previous step")
        h = _h(req.body.get("seed"), i, depth)
        if FORCE in text or depth >= 3 or h % 4 == 0:
            option = sample.options[h % len(sample.options)]
            return f"<think>Checking the candidates.</think>\n<answer>{option}</answer>"
        x, y = (50, 60) if same_point else (h % 1500, (h // 1500) % 1500)
        return f"<think>The region near ({x}, {y}) shows part of the scene.</think>"

    return reply


def _client(server, tmp_path, name="cache.sqlite", concurrency=16):
    return build_client("openai", "teacher", base_urls=[server.base_url], cache_path=tmp_path / name,
                        config=RuntimeConfig(concurrency=concurrency, timeout_s=10, max_retries=0))


def _search(sample, task, server, tmp_path, config, name="cache.sqlite"):
    async def go():
        async with _client(server, tmp_path, name) as client:
            return await QuestionSearch(sample, task, client, config).run()

    return asyncio.run(go())


def test_tree_shape_rollouts_and_backup(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=4, children=3, rollouts=2, max_depth=4, rollout_max_steps=3)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        result = _search(samples[0], task, server, tmp_path, config)
    tree = result.tree
    rewards_backed_up = 0
    for node in tree.nodes:
        assert len(node.children) <= config.children
        assert node.depth <= config.max_depth
        if node.step is not None and node.id != 0:
            # every expanded non-terminal child got exactly `rollouts` rollouts, each ending in an answer
            assert len(node.rollouts) == config.rollouts
            assert all(len(r.steps) < config.rollout_max_steps for r in node.rollouts)
            rewards_backed_up += len(node.rollouts)
        elif node.terminal:
            assert node.reward in (0.0, 1.0)
            rewards_backed_up += 1
    # The root's visits count every reward backed up (terminal re-visits add one each).
    assert tree.root.visits >= rewards_backed_up
    assert 0.0 <= tree.root.value <= 1.0
    assert result.stats.requests > 0 and result.stats.simulations == config.simulations
    # Points are stored in the pixel frame and rewards come from the V* verifier (option text vs gt).
    for node in tree.nodes:
        for r in node.rollouts:
            assert r.reward == task.score(samples[0], r.answer)


def test_answers_are_forced_at_max_depth(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=6, max_depth=2, rollout_max_steps=5)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        result = _search(samples[1], task, server, tmp_path, config)
        forced_requests = [r for r in server.requests if FORCE in "\n".join(r.texts)]
    assert forced_requests  # depth 2 is reached and the answer forced there
    assert all(n.depth <= 2 for n in result.tree.nodes)
    assert all(n.terminal for n in result.tree.nodes if n.depth == 2)
    for node in result.tree.nodes:
        for r in node.rollouts:
            assert node.depth + len(r.steps) < 2 or r.forced


def test_children_repeating_a_point_are_dropped(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=2, max_depth=5)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples, same_point=True)) as server:
        result = _search(samples[2], task, server, tmp_path, config)
    points = [n.step.point.rounded() for n in result.tree.nodes if n.step is not None]
    for node in result.tree.nodes:
        path_points = [s.point.rounded() for s in result.tree.steps_to(node)]
        assert len(path_points) == len(set(path_points))
    assert result.stats.dropped_repeats > 0
    assert len(set(points)) >= 1


def test_search_is_deterministic_given_seed(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=3, seed=7)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        a = _search(samples[0], task, server, tmp_path, config, "a.sqlite")
        b = _search(samples[0], task, server, tmp_path, config, "b.sqlite")
        c = _search(samples[0], task, server, tmp_path, SearchConfig(simulations=3, seed=8), "c.sqlite")
    assert a.tree.to_dict() == b.tree.to_dict()
    assert a.tree.to_dict() != c.tree.to_dict()


def _run(samples, task, server, run_dir, config):
    async def go():
        async with _client(server, run_dir) as client:
            return await run_search(samples, task, client, config, RunStore(run_dir))

    return asyncio.run(go())


def _trees(run_dir):
    return {r["question_id"]: r["tree"] for r in map(json.loads, (run_dir / "trees.jsonl").read_text().splitlines())}


def test_resume_after_a_crash_repeats_no_request(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=3)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        clean = _run(samples[:4], task, server, tmp_path / "clean", config)
        crashed = tmp_path / "crashed"
        _run(samples[:4], task, server, crashed, config)
        sent = server.request_count
        # A kill -9 mid-write: the last record is torn; one question was never finished.
        trees = crashed / "trees.jsonl"
        trees.write_bytes(trees.read_bytes()[:-40])
        resumed = _run(samples[:4], task, server, crashed, config)
        assert server.request_count == sent  # the cache answers everything the resumed run asks
    assert clean.done == 4 and resumed.skipped == 3 and resumed.done == 1
    assert _trees(crashed) == _trees(tmp_path / "clean")
    record = json.loads(trees.read_text().splitlines()[0])
    assert record["teacher"]["simulated"] is False and record["image_size"][0] >= 1600
    Tree.from_dict(record["tree"])


def test_budget_and_early_stop(task_and_samples, tmp_path):
    task, samples = task_and_samples
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        capped = _search(samples[0], task, server, tmp_path, SearchConfig(simulations=20, max_calls=3), "x.sqlite")
        early = _search(samples[0], task, server, tmp_path, SearchConfig(simulations=20, stop_after_correct=1),
                        "y.sqlite")
    assert capped.stats.stopped == "budget" and capped.stats.requests <= 3 + 2 * 3 * 3
    assert early.stats.stopped in ("enough_correct", "simulations")
    if early.stats.stopped == "enough_correct":
        assert early.correct >= 1
