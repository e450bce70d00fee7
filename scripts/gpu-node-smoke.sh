#!/usr/bin/env bash
# GPU smoke test of the Node addon with its CUDA backend: builds the engine with CUDA (the --direct g++/nvcc
# build a GPU server without npm uses), then drives it through the engine's JavaScript API
# (scripts/gpu-node-smoke.mjs, bundled with native/engine.ts): every attention method x KV cache on CUDA
# fp32/fp16 against the CPU backend, Hugging Face checkpoints against their float64 greedy tokens, tensor
# parallelism 2 when there are 2+ GPUs, and the errors a user meets (out of memory, tp > GPUs, no GPU, an
# unsupported head dim). Prints a table; exits 1 on any failure.
#
#   bash scripts/gpu-node-smoke.sh --prepare     here (node_modules present): bundle the driver and the engine into
#                                                .device-pack/flashlab-smoke/ (carried with .device-pack)
#   source .device-pack/env.sh && bash scripts/gpu-node-smoke.sh [--skip-build] [--steps a,b,...]
#                                                on the GPU host; needs node_modules/node-addon-api carried too
# Results (logs, per-step JSON, summary.json) go to $OUT/gpu-node-smoke when OUT is set, else bench/out/.
# Each step runs in a process of its own under its own time limit, and the whole run stays within
# FLASHLAB_SMOKE_BUDGET seconds (default 560) so that the table is printed before a 10-minute limit.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
bundle_dir="$root/.device-pack/flashlab-smoke"
bundle="$bundle_dir/smoke.mjs"
started=$SECONDS
budget=${FLASHLAB_SMOKE_BUDGET:-560}

die() { echo "gpu-node-smoke: $*" >&2; exit 2; }

# The bundle's inputs (from esbuild's metafile), hashed, so a host can tell a bundle older than its sources.
sources_hash() {
  local list=$1
  (cd "$root" && while read -r f; do
    if [ -f "$f" ]; then sha256sum "$f"; else echo "missing $f"; fi
  done <"$list") | sha256sum | cut -d' ' -f1
}

if [ "${1:-}" = "--prepare" ]; then
  [ -x node_modules/.bin/esbuild ] || die "node_modules/.bin/esbuild not found: --prepare runs where 'npm install' has run"
  mkdir -p "$bundle_dir"
  node_modules/.bin/esbuild scripts/gpu-node-smoke.mjs --bundle --platform=node --format=esm --target=node20 \
    --log-level=warning --outfile="$bundle" --metafile="$bundle_dir/meta.json" || die "bundling failed"
  node -e '
    const m = require(process.argv[1]);
    console.log(Object.keys(m.inputs).filter((f) => !f.includes("node_modules/")).sort().join("\n"));
  ' "$bundle_dir/meta.json" >"$bundle_dir/sources.txt"
  sources_hash "$bundle_dir/sources.txt" >"$bundle_dir/sources.sha256"
  echo "gpu-node-smoke: bundled $(wc -l <"$bundle_dir/sources.txt") sources into ${bundle#"$root"/} ($(du -h "$bundle" | cut -f1))"
  if [ ! -f .device-pack/env.sh ]; then
    # The rest of the pack (Node.js and the Node-API headers) comes from the workspace's pack.sh.
    pack="${FLASHLAB_DEVICE_PACK:-$root/../shared/device/pack.sh}"
    if [ -f "$pack" ]; then bash "$pack" || die "$pack failed"
    else echo "gpu-node-smoke: .device-pack/env.sh is missing: run the device pack's pack.sh too"; fi
  fi
  echo "gpu-node-smoke: on the GPU host, with .device-pack and node_modules/node-addon-api carried:"
  echo "  source .device-pack/env.sh && bash scripts/gpu-node-smoke.sh"
  exit 0
fi

skip_build=0
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-build) skip_build=1 ;;
    --steps) only=",${2:-},"; shift ;;
    *) die "usage: gpu-node-smoke.sh [--prepare | --skip-build] [--steps build,hf,info,gpt2-methods,...]" ;;
  esac
  shift
done

command -v node >/dev/null || die "node not found: 'source .device-pack/env.sh' first"
[ -f node_modules/node-addon-api/napi.h ] || [ -n "${NODE_ADDON_API_DIR:-}" ] ||
  die "node_modules/node-addon-api is missing: carry it along (its headers build the addon)"

out="${OUT:-$root/bench/out}/gpu-node-smoke"
rm -rf "$out" && mkdir -p "$out" || die "cannot write $out"
: >"$out/steps.txt"

# The driver: the bundle where it was prepared; where node_modules/tsx is (a development machine), the source.
if [ -f "$bundle" ]; then
  driver=(node --enable-source-maps "$bundle")
  if [ "$(sources_hash "$bundle_dir/sources.txt")" != "$(cat "$bundle_dir/sources.sha256")" ]; then
    echo "gpu-node-smoke: WARNING: ${bundle#"$root"/} is older than its sources; run --prepare where node_modules is" | tee "$out/WARNING"
  fi
elif [ -f node_modules/tsx/dist/loader.mjs ]; then
  driver=(node --import ./node_modules/tsx/dist/loader.mjs scripts/gpu-node-smoke.mjs)
else
  die "no driver: run 'bash scripts/gpu-node-smoke.sh --prepare' where node_modules is, and carry .device-pack"
fi

# The bundle lives in .device-pack: the engine it loads is the one this script builds.
export FLASHLAB_ENGINE_PATH="$root/native/build/Release/flashlab_engine.node"

gpus=0
if command -v nvidia-smi >/dev/null; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
device=${FLASHLAB_SMOKE_DEVICE:-cuda}
echo "gpu-node-smoke: $gpus GPU(s), device $device, results in $out"

want() { [ -z "$only" ] || [[ "$only" == *",$1,"* ]]; }

# run_step NAME LIMIT_S COMMAND...: under min(LIMIT_S, what is left of the budget); its exit status goes to steps.txt.
run_step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - (SECONDS - started) - 15))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "$name 124" >>"$out/steps.txt"
    echo "  $name: no time left in the budget"
    return
  fi
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name $rc" >>"$out/steps.txt"
  echo "  $name: exit $rc in $((SECONDS - t0)) s"
}

# A step's result by the shell itself (the build, the checkpoints): one row of the report.
note() {  # step ok detail
  node -e 'const [f, check, ok, detail] = process.argv.slice(1);
    require("fs").writeFileSync(f, JSON.stringify([{ check, ok: ok === "1", detail }]));' \
    "$out/$1.json" "$1" "$2" "$3"
}

if want build && [ $skip_build = 0 ]; then
  run_step build 420 env FLASHLAB_CUDA="${FLASHLAB_CUDA:-on}" node scripts/build-native.mjs --direct
  rc=$(tail -1 "$out/steps.txt" | cut -d' ' -f2)
  note build "$([ "$rc" = 0 ] && echo 1 || echo 0)" "$(grep -E 'build-native: (built|up to date)|FLASHLAB_CUDA|failed' "$out/build.log" | tail -2 | tr '\n' ' ')"
fi

# Checkpoints written by transformers at head dims the CUDA kernels take (the committed fixtures have head dim
# 16), with float64 greedy references in the fixtures' reference.json format.
hf="$out/hf"
if want hf; then
  if python3 -c 'import torch, transformers' 2>/dev/null; then
    run_step hf 180 python3 - "$hf" <<'PY'
import json, os, random, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel
out = sys.argv[1]
NEW = 8
for name, kw in {
    "gpt2-hd64": dict(n_layer=2, n_embd=256, n_head=4, vocab_size=1000, n_positions=160),
    "gpt2-hd128": dict(n_layer=2, n_embd=256, n_head=2, vocab_size=777, n_positions=160),
}.items():
    torch.manual_seed(len(name))
    cfg = GPT2Config(**kw, layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # wider than the default init, so that greedy choices are not near-ties
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = os.path.join(out, name)
    model.save_pretrained(d)
    m64 = GPT2LMHeadModel.from_pretrained(d).to(torch.float64).eval()
    g = random.Random(7)
    cases = []
    for n in (1, 7, 97):
        ids = [g.randrange(kw["vocab_size"]) for _ in range(n)]
        x = torch.tensor([ids])
        steps, greedy = [], []
        with torch.no_grad():
            for _ in range(NEW):
                logits = m64(x).logits[0, -1]
                tok = int(torch.argmax(logits))
                steps.append(logits.tolist())
                greedy.append(tok)
                x = torch.cat([x, torch.tensor([[tok]])], dim=1)
        cases.append(dict(inputIds=ids, greedy=greedy, logitsLast=steps[0], logitsSteps=steps[1:]))
    json.dump(dict(kind="gpt2", source="transformers.GPT2LMHeadModel float64 CPU (gpu-node-smoke)",
                   maxNewTokens=NEW, cases=cases), open(os.path.join(d, "reference.json"), "w"))
    print("wrote", d, os.listdir(d))
PY
    rc=$(tail -1 "$out/steps.txt" | cut -d' ' -f2)
    note hf "$([ "$rc" = 0 ] && echo 1 || echo 0)" "$(tail -2 "$out/hf.log" | tr '\n' ' ')"
  else
    echo "hf 0" >>"$out/steps.txt"
    note hf 1 "not run: python3 with torch and transformers not found (only the committed hd-16 fixture is checked)"
  fi
fi

drive() {  # step limit [env...]
  local name=$1 limit=$2
  shift 2
  want "$name" || return 0
  run_step "$name" "$limit" env "$@" "${driver[@]}" --step "$name" --results "$out" --device "$device" \
    --hf "$hf" --gpus "$gpus"
}
drive info 60
drive gpt2-methods 120
drive chatglm2-methods 120
drive fixtures 120
drive tiny-models 120
drive tp 180
drive errors 240
drive no-gpu 60 CUDA_VISIBLE_DEVICES=

echo
node -e '' 2>/dev/null || die "node stopped working"
"${driver[@]}" --report "$out"
status=$?
[ -f "$out/WARNING" ] && cat "$out/WARNING"
echo "gpu-node-smoke: $((SECONDS - started)) s; logs and summary.json in $out"
exit $status
