"""A search against a teacher that garbles its replies: a question with no usable reply fails (and is searched again
by ``--resume``), and a run whose teacher never gave a usable reply exits non-zero saying so."""

import asyncio
import json

import pytest
from typer.testing import CliRunner

from tests.trace_forge.fake_servers import FakeOpenAIServer, malformed
from tests.trace_forge.test_search_mcts import scripted_teacher
from trace_forge.cli import app
from trace_forge.search.mcts import NoUsableReply, SearchConfig, run_search
from trace_forge.search.store import RunStore
from trace_forge.tasks import get_task
from trace_forge.teachers import RuntimeConfig, build_client

VSTAR = "data/samples/vstar"
CONFIG = SearchConfig(simulations=2, rollouts=1, rollout_max_steps=2)


@pytest.fixture(scope="module")
def task_and_samples():
    task = get_task("vstar")
    return task, list(task.load(VSTAR, limit=3))


def _run(server, store, task, samples, config=CONFIG):
    async def go():
        async with build_client("openai", "teacher", base_urls=[server.base_url], cache_path=store.cache_path,
                                config=RuntimeConfig(timeout_s=10, max_retries=0)) as client:
            return await run_search(samples, task, client, config, store)

    return asyncio.run(go())


def test_a_question_without_a_usable_reply_fails_and_is_searched_again_on_resume(task_and_samples, tmp_path):
    task, samples = task_and_samples
    broken = {samples[1].question}

    def garble(request):
        return malformed() if any(q in text for q in broken for text in request.texts) else None

    store = RunStore(tmp_path)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples), script=garble) as server:
        summary = _run(server, store, task, samples)
        assert (summary.done, summary.failed, summary.failures) == (2, 1, [samples[1].id])
        assert sorted(store.finished()) == sorted([samples[0].id, samples[2].id])
        (error,) = map(json.loads, store.errors_path.read_text().splitlines())
        assert error["question_id"] == samples[1].id and error["error"] == "NoUsableReply"
        assert "3 request(s) with malformed replies" in error["message"]  # every expansion attempt of the root

        broken.clear()  # the server recovers: the resumed run searches the failed question, and only it
        before = server.request_count
        resumed = _run(server, store, task, samples)
        assert (resumed.done, resumed.skipped, resumed.failed) == (1, 2, 0)
        assert server.request_count > before
    record = store.finished()[samples[1].id]
    assert record.stats["completions"] > 0 and len(record.tree.nodes) > 1


def test_a_teacher_that_never_gives_a_usable_reply_fails_the_run(tmp_path):
    with FakeOpenAIServer(script=lambda request: malformed()) as server:
        result = CliRunner().invoke(app, ["search", "--task", "vstar", "--data-dir", VSTAR, "--limit", "3",
                                          "--teacher", "openai", "--model", "m", "--base-url", server.base_url,
                                          "--max-retries", "0", "--simulations", "2", "--quiet",
                                          "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, NoUsableReply), result.output
    assert "the teacher gave no usable reply in this run: all 3 question(s) attempted failed" in str(result.exception)
    assert not (tmp_path / "run" / "trees.jsonl").exists()  # nothing a resume would take as done


def test_malformed_replies_then_healthy_ones_give_the_yield_of_a_healthy_run(task_and_samples, tmp_path):
    task, samples = task_and_samples
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        healthy = _run(server, RunStore(tmp_path / "healthy"), task, samples[:1])
    with FakeOpenAIServer(reply_text=scripted_teacher(samples), faults=[malformed()] * 2) as server:
        garbled = _run(server, RunStore(tmp_path / "garbled"), task, samples[:1])
    assert (garbled.done, garbled.solved) == (healthy.done, healthy.solved)
    trees = [RunStore(tmp_path / name).finished()[samples[0].id].tree.to_dict() for name in ("healthy", "garbled")]
    assert trees[0] == trees[1]
