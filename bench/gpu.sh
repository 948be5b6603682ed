#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one run and one JSON file (under 8 minutes on one H100 / H200):
#
#     bash bench/gpu.sh bench_gpu.json            # from the repository root, on the GPU machine
#     bash bench/gpu.sh out.json --dry-run        # the same sequence at tiny sizes on the CPU (or GPU_BENCH_DEVICE=cpu)
#
# Steps, in order (each under its own timeout, so a failure or a hang never loses the others; the JSON records
# a failed step's exit status and the last lines of its stderr):
#   env              torch / CUDA / cuDNN / NCCL versions and the GPUs torch sees; nvidia_smi: the driver's view
#   inference        bench/inference.py, vox2 256x256 generator fps at batch 1, 8, 32
#   th_eager_b8 ...  bench/train.py, talking heads vox2 256x256 K=8 at batch 8, eager (fp32) and fast
#                    (train.amp auto -> bf16, torch.compile): samples/s, MFU, peak memory, syncs per step
#   hg_eager_b6 ...  the same for HeadGAN (config headgan, 256x256) at the paper's batch 6
#   demo_store       a tiny demo store (dataset.demo clips + dlib landmarks) for the meta_train smoke runs
#   meta_train_*     meta_train.py under torchrun on the demo store: 2 processes with NCCL where there are 2
#                    GPUs, else 1 process (NCCL refuses two ranks on one GPU, and each rank takes GPU LOCAL_RANK)
#   th_*_max         talking heads at the largest batch that fits (bench/train.py --batch-size max)
# The JSON's "summary" gathers the headline numbers and the issue's targets next to them.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

OUT=bench_gpu.json
DEVICE=${GPU_BENCH_DEVICE:-cuda}
for arg in "$@"; do
    case $arg in
        --dry-run) DEVICE=cpu ;;
        -*) echo "usage: bash bench/gpu.sh [OUT.json] [--dry-run]" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The timeouts are sized for the GPU; a CPU dry run gets three times as long, since its step time is mostly
# start-up (imports, building the networks) on what may be a busy machine.
SCALE=1
[[ $DEVICE == cpu ]] && SCALE=3
DEADLINE=$((SECONDS + 460 * SCALE))  # GPU: 7 min 40 s for the steps; the rest is start-up and writing the JSON

# step NAME SECONDS COMMAND...: runs COMMAND under `timeout`, capped by what is left of the whole budget.
step() {
    local name=$1 limit=$2 left start
    shift 2
    echo "$name" >> "$WORK/order"
    printf '%q ' "$@" > "$WORK/$name.cmd"
    left=$((DEADLINE - SECONDS)) limit=$((limit * SCALE))
    if ((left < 10)); then
        echo "skipped: the script's time budget is spent" > "$WORK/$name.skipped"
        echo "== $name: skipped (out of time)" >&2
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (timeout ${limit}s)" >&2
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
    echo $? > "$WORK/$name.rc"
    echo $((SECONDS - start)) > "$WORK/$name.seconds"
    echo "   exit $(cat "$WORK/$name.rc") after $((SECONDS - start)) s" >&2
}

skip() {  # skip NAME REASON: a step that cannot run here, recorded as such
    echo "$1" >> "$WORK/order"
    echo "$2" > "$WORK/$1.skipped"
    echo "== $1: $2" >&2
}

if [[ $DEVICE == cpu ]]; then
    # Plumbing check: tiny sizes, one step. The fast steps run eager (compiling on a CPU takes minutes) and the
    # max-batch steps a fixed batch (the search needs CUDA's out-of-memory error).
    TH=(--config demo --set model.image_size=32) HG=(--config headgan_demo --set model.image_size=32)
    STEPS=(--steps 1 --warmup 0) TH_BATCH=2 HG_BATCH=2 MAX=2 FAST=eager
    INFERENCE=(--config demo --set model.image_size=32 --frames 32 --repeats 1)
    STORE_SIZE=32 SMOKE=(--config demo --set model.image_size=32)
else
    TH=(--config vox2) HG=(--config headgan)
    STEPS=(--steps 10 --warmup 3) TH_BATCH=8 HG_BATCH=6 MAX=max FAST=fast
    INFERENCE=(--config vox2 --frames 256)
    STORE_SIZE=64 SMOKE=(--config demo)
fi

step env 30 "$PY" - <<'EOF'
import json, torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
    "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    "bf16": cuda and torch.cuda.is_bf16_supported(),
    "memory_gib": [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)
                   for i in range(torch.cuda.device_count())]}))
EOF
step nvidia_smi 15 nvidia-smi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

step inference 45 "$PY" bench/inference.py "${INFERENCE[@]}" --device "$DEVICE" --batch-sizes 1 8 32
step th_eager_b8 60 "$PY" bench/train.py "${TH[@]}" --device "$DEVICE" --batch-size "$TH_BATCH" "${STEPS[@]}" --mode eager
step th_fast_b8 120 "$PY" bench/train.py "${TH[@]}" --device "$DEVICE" --batch-size "$TH_BATCH" "${STEPS[@]}" --mode "$FAST"
step hg_eager_b6 45 "$PY" bench/train.py "${HG[@]}" --device "$DEVICE" --batch-size "$HG_BATCH" "${STEPS[@]}" --mode eager
step hg_fast_b6 100 "$PY" bench/train.py "${HG[@]}" --device "$DEVICE" --batch-size "$HG_BATCH" "${STEPS[@]}" --mode "$FAST"

step demo_store 40 bash -c '"$0" -m dataset.demo --out "$1/clips" --identities 4 --clips-per-identity 2 \
        --frames 12 --size 64 --seed 0 &&
    "$0" dataset/voxceleb1/extract_landmark.py --root "$1/clips" --out "$1/store" --backend dlib --size "$2" \
        --frames-per-video 12 --min-frames 5 --test-identities id00004 --workers 2' "$PY" "$WORK" "$STORE_SIZE"
TRAIN_RUN=(meta_train.py "${SMOKE[@]}" --set "data.root=$WORK/store" --set train.steps=4 --set train.log_every=2
           --set train.val_every=0 --set train.image_every=4 --set train.checkpoint_every=4 --set data.num_workers=0)
if [[ $DEVICE == cpu ]]; then  # gloo: two CPU processes check the same launch and DDP path
    step meta_train_2proc 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 "${TRAIN_RUN[@]}" \
        --out "$WORK/run" --device cpu
elif ((GPUS >= 2)); then
    step meta_train_2proc 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 "${TRAIN_RUN[@]}" \
        --out "$WORK/run" --device cuda
else
    skip meta_train_2proc "skipped: one GPU (NCCL refuses two ranks on one device, and each rank takes GPU LOCAL_RANK)"
    step meta_train_1proc 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "${TRAIN_RUN[@]}" \
        --out "$WORK/run" --device cuda
fi

step th_eager_max 90 "$PY" bench/train.py "${TH[@]}" --device "$DEVICE" --batch-size "$MAX" "${STEPS[@]}" --mode eager
step th_fast_max 150 "$PY" bench/train.py "${TH[@]}" --device "$DEVICE" --batch-size "$MAX" "${STEPS[@]}" --mode "$FAST"

"$PY" - "$WORK" "$OUT" "$DEVICE" "$SECONDS" <<'EOF'
"""Gathers the steps' outputs into one JSON file, with a summary of the headline numbers."""
import json, os, re, sys, tempfile, time
from pathlib import Path

work, out, device, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def read(name, suffix):
    path = work / f"{name}.{suffix}"
    return path.read_text() if path.is_file() else None


def tail(text, lines=15):
    """The last lines of a stream, progress-bar redraws (carriage returns) split like lines."""
    parts = [p.strip() for p in re.split(r"[\r\n]+", text or "") if p.strip()]
    return parts[-lines:]


steps = {}
for name in (work / "order").read_text().split():
    entry = {"command": (read(name, "cmd") or "").strip()}
    if read(name, "skipped") is not None:
        steps[name] = {**entry, "status": read(name, "skipped").strip()}
        continue
    rc = int(read(name, "rc") or -1)
    entry.update({"exit": rc, "seconds": int(read(name, "seconds") or 0)})
    stdout = read(name, "out") or ""
    try:
        entry["result"] = json.loads(stdout)
    except json.JSONDecodeError:
        entry["output"] = tail(stdout, 40)
    if rc != 0:
        entry["status"] = "timed out" if rc in (124, 137) else f"failed (exit {rc})"
        entry["stderr_tail"] = tail(read(name, "err"))
    else:
        entry["status"] = "ok"
    steps[name] = entry


def mode(name):
    """The one mode a bench/train.py step ran, cut to the headline fields (None if the step has no result)."""
    result = steps.get(name, {}).get("result")
    if not result:
        return None
    (label, m), = result["modes"].items()
    keys = ("amp", "compile", "batch_size", "samples_per_s", "mfu", "peak_memory_mib", "syncs_per_step", "error")
    return {"mode": label, **{k: m[k] for k in keys if k in m},
            **({"max_batch_search": m["max_batch"]} if "max_batch" in m else {})}


def metrics_tail(run):
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    return {k: last[k] for k in ("step", "perf/samples_per_s", "loss/g_total", "loss/d_total") if k in last}


inference = (steps.get("inference", {}).get("result") or {}).get("generator_fps", {})
fast8 = mode("th_fast_b8") or {}
batched = max((v for k, v in inference.items() if k != "1"), default=None)
summary = {
    "talking_heads_vox2_256_k8": {"batch_8": {"eager": mode("th_eager_b8"), "fast": mode("th_fast_b8")},
                                  "largest_batch": {"eager": mode("th_eager_max"), "fast": mode("th_fast_max")}},
    "headgan_256": {"batch_6": {"eager": mode("hg_eager_b6"), "fast": mode("hg_fast_b6")}},
    "inference_generator_fps": inference,
    "meta_train_smoke": {name: {"status": steps[name]["status"], **metrics_tail(work / "run")}
                         for name in ("meta_train_2proc", "meta_train_1proc") if name in steps},
    "targets": {"meta-training >= 60 samples/s (fast, batch 8)": fast8.get("samples_per_s"),
                "inference >= 300 fps batched": batched, "inference >= 60 fps at batch 1": inference.get("1")},
}
report = {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device, "dry_run": device == "cpu",
          "seconds": seconds, "summary": summary, "steps": steps}
if device == "cpu":
    report["note"] = ("dry run on the CPU at tiny sizes: the fast steps ran eager and the max-batch steps a fixed "
                      "batch; the numbers only show that the plumbing works")
out.parent.mkdir(parents=True, exist_ok=True)
with tempfile.NamedTemporaryFile("w", dir=out.parent, prefix=f".{out.name}.", suffix=".tmp", delete=False) as f:
    json.dump(report, f, indent=1)
os.replace(f.name, out)
failed = [name for name, s in steps.items() if s["status"] not in ("ok",) and not s["status"].startswith("skipped")]
print(f"wrote {out} in {seconds} s" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
EOF
