#!/bin/bash
# The GPU checks and benchmarks, in one go, on a machine with a CUDA GPU:
#   bash benchmarks/gpu_run.sh            (writes logs and JSON to $OUT, default ./gpu-out)
# Wheels for packages the machine lacks can sit in .whl/ (installed to /tmp/site); clips are
# read from $STREAMREC_CLIPS (default ../shared/clips beside the repository, or .devdata/clips
# when that exists, else the shipped demo/clips).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
[ -d .devdata/clips ] && export STREAMREC_CLIPS=${STREAMREC_CLIPS:-$PWD/.devdata/clips}
CLIPS=${STREAMREC_CLIPS:-../shared/clips}
[ -d "$CLIPS" ] || CLIPS=demo/clips
MC_CLIP="$CLIPS/cleaning_pool.mp4"; [ -f "$MC_CLIP" ] || MC_CLIP=demo/clips/arm_wrestling.mp4  # a 30 fps clip when there
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }  # ONLY="tests bench ..." runs those parts
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
$PY -c "import torch, torchvision, av, cv2, websockets; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'av', av.__version__, 'cv2', cv2.__version__, 'websockets', websockets.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$OUT/versions.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/versions.txt"
want fusion && { echo "== fused conv+bias+ReLU vs unfused, batch 1 and 32"; timeout ${FUSION_S:-180} $PY benchmarks/gpu_fusion.py --inductor --json "$OUT/fusion.json" > "$OUT/fusion.md" 2> "$OUT/fusion.err"; echo "fusion rc=$?"; cat "$OUT/fusion.md"; tail -3 "$OUT/fusion.err"; }
want tests && { echo "== tests (gpu)"; timeout 170 $PY -m pytest -p no:cacheprovider tests/test_gpu.py -m "gpu or not gpu" -v -s --timeout 160 > "$OUT/pytest.log" 2>&1; echo "pytest rc=$?"; grep -E "passed|failed|PASSED|FAILED|Error|windows, backend|serve on cuda" "$OUT/pytest.log" | tail -15; }
want bench && { echo "== bench r2plus1d_18"; timeout 200 $PY -m streamrec bench --models r2plus1d_18 --device cuda --clip demo/clips/arm_wrestling.mp4 --clips "$CLIPS" --out "$OUT/bench.json" > "$OUT/bench.md" 2> "$OUT/bench.err"; echo "bench rc=$?"; cat "$OUT/bench.md"; tail -3 "$OUT/bench.err"; }
want multicam && { echo "== 32 cameras"; timeout 110 $PY benchmarks/multicam.py --cameras 32 --seconds 30 --warmup 20 --device cuda --clip "$MC_CLIP" --json "$OUT/multicam.json" > "$OUT/multicam.md" 2> "$OUT/multicam.err"; echo "multicam rc=$?"; cat "$OUT/multicam.md"; tail -3 "$OUT/multicam.err"; }
want profile && { echo "== profile"; timeout 90 $PY benchmarks/gpu_profile.py > "$OUT/profile.txt" 2>/dev/null; echo "profile rc=$?"; cat "$OUT/profile.txt"; }
want multicam64 && { echo "== 64 cameras (more than max_batch: cameras take turns)"; timeout ${MC64_S:-200} $PY benchmarks/multicam.py --cameras 64 --seconds 30 --warmup 15 --device cuda --clip "$MC_CLIP" --json "$OUT/multicam64.json" > "$OUT/multicam64.md" 2> "$OUT/multicam64.err"; echo "multicam64 rc=$?"; cat "$OUT/multicam64.md"; grep -E "per window|backend trial|vs with CUDA" "$OUT/multicam64.err" | tail -4; tail -2 "$OUT/multicam64.err"; }
want live && { echo "== live, 1 camera"; timeout 60 $PY benchmarks/live.py --device cuda --seconds 25 --no-naive --clip demo/clips/arm_wrestling.mp4 2>/dev/null | tail -1; }
want autotune && { echo "== inductor max-autotune"; STREAMREC_BENCH_COMPILE_MODE=max-autotune-no-cudagraphs timeout ${AUTOTUNE_S:-240} $PY -m streamrec bench --models r2plus1d_18 --device cuda --batches 1,32 --clip demo/clips/arm_wrestling.mp4 --clips /nonexistent --out "$OUT/bench_autotune.json" > "$OUT/bench_autotune.md" 2>/dev/null; echo "autotune rc=$?"; grep -E "inductor|Batched" "$OUT/bench_autotune.md"; }
want models && { echo "== other models"; timeout ${OTHER_S:-110} $PY -m streamrec bench --models ${OTHER_MODELS:-r3d_18,mc3_18,s3d,mvit_v2_s,swin3d_t} --device cuda --batches 1,8,32 --clip demo/clips/arm_wrestling.mp4 --clips /nonexistent --out "$OUT/bench_models.json" > "$OUT/bench_models.md" 2> "$OUT/bench_models.err"; echo "models rc=$?"; grep -E "^###|cuda-graphs \||classifier|Batched" "$OUT/bench_models.md"; tail -2 "$OUT/bench_models.err"; }
# Python's thread switch interval against GIL convoys: 64 and 32 cameras at 5 ms (CPython's default) and 0.5 ms
want switch && for n in ${SWITCH_CAMERAS:-64 32}; do for si in ${SWITCH_MS:-5 0.5}; do
  timeout 100 $PY benchmarks/multicam.py --cameras $n --seconds 15 --warmup 8 --device cuda --clip "$MC_CLIP" --switch-interval-ms $si --json "$OUT/mc${n}_si$si.json" > "$OUT/mc${n}_si$si.md" 2> "$OUT/mc${n}_si$si.err"
  echo "== $n cameras, switch interval $si ms: rc=$?"; grep -E "labels|capture|latency|inference per|waiting|process" "$OUT/mc${n}_si$si.md"
done; done
# decoder threads: capture alone, then 64 cameras end to end with one thread per small stream and with FFmpeg's own
want decode && { echo "== capture throughput"; timeout 60 $PY benchmarks/decode_threads.py --cameras 1,16,64 --clip "$MC_CLIP" | tee "$OUT/decode_threads.md"; }
want decode && for flag in "" --ffmpeg-decoder-threads; do
  timeout 100 $PY benchmarks/multicam.py --cameras 64 --seconds 15 --warmup 8 --device cuda --clip "$MC_CLIP" $flag --json "$OUT/mc64$flag.json" > "$OUT/mc64$flag.md" 2>/dev/null
  echo "== 64 cameras ${flag:-one decoder thread per small stream}: rc=$?"; grep -E "labels|capture|latency|inference per|waiting|process" "$OUT/mc64$flag.md"
done
nvidia-smi --query-gpu=memory.used,temperature.gpu,clocks.sm --format=csv
