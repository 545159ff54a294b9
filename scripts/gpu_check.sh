#!/usr/bin/env bash
# One command for a machine with one GPU (H100 / H200), done within 8 minutes:
#   1. the GPU-only tests (`pytest -m gpu`: bf16 fits, FSDP on one device, nvJPEG against PIL);
#   2. training throughput (img/s) and peak memory of each family against what a user could install
#      instead (timm, transformers), fp32 and bf16, torch.compile off and on (scripts/bench.py throughput);
#   3. a short bf16 training of every tiny experiment (scripts/gpu_check.py train);
#   4. the ImageNet loader with data.decode=cpu against data.decode=gpu (nvJPEG batches, augmentation on
#      the GPU), 4 workers (scripts/bench.py data; its own section of docs/benchmarks.md);
#   5. what gradient checkpointing saves and costs on a ViT-B/16 step (scripts/bench.py memory);
#   6. the GPU sections of docs/benchmarks.md and a summary (scripts/gpu_check.py report).
#
#   scripts/gpu_check.sh              # on the GPU machine; then commit docs/benchmarks.md
#   scripts/gpu_check.sh --dry-run    # the same steps on CPU at toy sizes, nothing in docs/: about 5 minutes
#                                     # on an idle 2-core CPU (fewer combinations, compile through dynamo's
#                                     # eager backend, one tiny experiment per family)
#
# Every step runs under its own time limit, and none starts after the overall deadline, so a hang costs
# one step, not the run. Results are written as they come (OUT/throughput.jsonl, OUT/train.jsonl,
# OUT/steps.tsv, a log per step; OUT defaults to outputs/gpu_check); the report is rewritten after every
# step, so a run cut short still leaves its tables. The exit status is 1 when any step failed.
# Environment: PYTHON (default: .venv/bin/python if present, else python), OUT, BUDGET (seconds; 470 on
# the GPU, 600 for --dry-run).
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
    esac
done

if [ -x .venv/bin/python ]; then DEFAULT_PYTHON=.venv/bin/python; else DEFAULT_PYTHON=python; fi
PYTHON=${PYTHON:-$DEFAULT_PYTHON}
OUT=${OUT:-outputs/gpu_check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$OUT" && mkdir -p "$OUT"

if [ "$DRY_RUN" = 1 ]; then
    DOC="$OUT/benchmarks.md"  # a dry run never touches docs/
    THROUGHPUT=(--device cpu --toy --rounds 1 --warmup 1)
    TRAIN=(--dry-run --limit 90)
    SCALE=6  # step limits: a (shared, loaded) CPU is much slower than a GPU
    BUDGET=${BUDGET:-600}
    REPORT=(--dry-run)
    DATA=(--device cpu --toy --workers 0 --rounds 1 --steps 1)
    MEMORY=(--device cpu --model vit_ti16 --image-size 32 --batch-size 2 --rounds 1)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} CUDA_VISIBLE_DEVICES=""
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "gpu_check.sh: no CUDA device visible to $PYTHON (use --dry-run on a CPU machine)" >&2
        exit 2
    fi
    DOC=docs/benchmarks.md
    THROUGHPUT=(--device cuda --rounds 3 --warmup 3)
    TRAIN=(--limit 30)
    REPORT=()
    DATA=(--device cuda --workers 4 --rounds 3 --steps 4)
    MEMORY=(--device cuda --batch-size 128 --rounds 3 --steps 5 --warmup 2)
    SCALE=1
    BUDGET=${BUDGET:-470}
fi

DEADLINE=$((SECONDS + BUDGET))
FAILED=0
printf '' >"$OUT/steps.tsv"

# step NAME LIMIT COMMAND...: run COMMAND under `timeout` (at most the time left), log it, record it
step() {
    local name=$1 limit=$(($2 * SCALE)) left=$((DEADLINE - SECONDS)) start=$SECONDS status
    shift 2
    if [ "$left" -lt 10 ]; then
        status="skipped (overall deadline)"
    else
        [ "$limit" -gt "$left" ] && limit=$left
        echo "== $name (limit ${limit} s)"
        timeout -k 5 "$limit" "$@" </dev/null >"$OUT/$name.log" 2>&1
        case $? in
            0) status=ok ;;
            124 | 137) status="timeout after ${limit} s" ;;
            *) status="failed (see $OUT/$name.log)" ;;
        esac
    fi
    [ "$status" = ok ] || FAILED=1
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$OUT/steps.tsv"
    echo "   $status, $((SECONDS - start)) s"
    "$PYTHON" scripts/gpu_check.py report --out "$OUT" --output "$DOC" "${REPORT[@]}" </dev/null >/dev/null 2>&1
}

if [ "$DRY_RUN" = 1 ]; then
    step pytest_gpu 15 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests/test_cli.py
else
    step pytest_gpu 60 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
fi
step tiny_trainings 90 "$PYTHON" scripts/gpu_check.py train --out "$OUT" "${TRAIN[@]}"
# family, time limit (s, on the GPU), combinations: compile (a minute or more per model on a GPU) where it
# may pay and fits, for the transformers; eager results come first, so a compile cut short loses only itself
while read -r family limit combos; do
    read -r -a combos <<<"$combos"
    if [ "$DRY_RUN" = 1 ]; then
        case " ${combos[*]} " in
            *" bf16+compile "*) combos=(fp32 bf16+compile) ;;
            *) combos=(bf16) ;;
        esac
    fi
    step "throughput_$family" "$limit" "$PYTHON" scripts/bench.py throughput --family "$family" \
        "${THROUGHPUT[@]}" --combos "${combos[@]}" --jsonl "$OUT/throughput.jsonl"
done <<'EOF_FAMILIES'
vit 90 fp32 bf16 bf16+compile
igpt 75 fp32 bf16 bf16+compile
detr 45 fp32 bf16
lambda 40 fp32 bf16
ttsr 30 fp32 bf16
fpt 35 fp32 bf16
EOF_FAMILIES
step data_gpu_decode 40 "$PYTHON" scripts/bench.py data --pipelines imagenet_gpu_decode "${DATA[@]}" \
    --jsonl "$OUT/data.jsonl" --output "$DOC" --title "ImageNet loader with GPU JPEG decoding (data.decode=gpu)"

step memory_checkpointing 60 "$PYTHON" scripts/bench.py memory "${MEMORY[@]}" --output "$DOC"

"$PYTHON" scripts/gpu_check.py report --out "$OUT" --output "$DOC" "${REPORT[@]}"
echo "gpu_check.sh: $((SECONDS)) s; results in $OUT, tables in $DOC"
exit $FAILED
