#!/usr/bin/env bash
# The GPU check, run from the repository root on the GPU machine:
#   (a) every gpu-marked test, and the torch tests that need no GPU (CI has no torch);
#   (b) the runtime benchmark at 1080p and 720p, batch 1 and 4, pre-decoded frames, real CPU
#       decode and NVDEC (decode alone; engine.stream; latency over the engine's GPU time); then
#       the detection postprocess benchmark (tools/bench_postprocess.py: numpy per frame, and the
#       GPU batch stage at batch 1, 8 and 32);
#   (c) only when asked (stage "cameras", about 7 minutes): tools/bench_batching.py (stream_many
#       against the engine alone at each batch size), then tools/bench_cameras.py, N paced
#       1080p/720p cameras through engine.stream_many vs one engine.stream per camera;
#   (d) only when asked (stage "repeat", with BASELINE): the real-decode rows of (b), REPEATS
#       times (default 3), the baseline's and ours alternating, so run-to-run noise shows; then
#       tools/bench_pack.py (where the host time of the upload goes);
#   (e) only when asked (stage "fleet", about 4 minutes): the Ray fleet's gpu test, then
#       tools/bench_fleet.py, one engine through stream_many against a one-actor single-node Ray
#       fleet in the same run (torch backend; target: the fleet costs <= 5% throughput), and
#       what one poll costs on this host (bench_fleet.py --polls).
#   (f) only when asked (stage "gil", about 5 minutes): Python's default GIL switch interval
#       (5 ms) against 0.5 ms, alternating, twice: tools/bench_batching.py at batch 8 and 32
#       (stream_many against the engine alone), tools/bench_postprocess.py (the detect
#       stage alone and beside a busy thread) and tools/bench_gil_calls.py (a short CUDA call
#       with the GIL let go, as cuda-python makes it, against held through ctypes.PyDLL, beside
#       a busy thread), each with --switch-interval: whether a shorter interval, or calls that
#       keep the GIL, are worth having.
#
# Usage: bash tools/gpu_check.sh [all|tests|bench|cameras|repeat|fleet|gil]
#        (default: all = tests + bench)
# Writes into $OUT (default ./out): gpu_tests.log, gpu_tests.xml, bench_after.json/.log and,
# with BASELINE set, bench_before.json/.log and postprocess_before.json/.log; postprocess.json/.log;
# stage cameras:
# batching.json/.log, cameras.json/.log; stage repeat: repeat_before_K.json, repeat_after_K.json,
# pack.json and their logs; stage fleet: fleet_tests.log, fleet.json/.log, fleet_polls.log (Ray
# from a carried .whl/ray-site.tar.xz, below); stage gil: gil_batching_INTERVAL_K.json and
# gil_postprocess_INTERVAL_K.json, gil_calls_INTERVAL_K.json with their logs.
#
# Environment:
#   OUT             where results go (the device tool's result folder).
#   ENGINES         engines of the pre-decoded rows (default spin-1ms,resnet18; resnet* need
#                   torchvision, else spin engines only).
#   REAL_ENGINES    engines of the real-decode and NVDEC rows (default resnet18, else spin-1ms).
#   FRAMES          pre-decoded frames a row (default 300).
#   REPEATS         stage repeat: runs of each tree (default 3).
#   CAMERAS_BUDGET  stage cameras: seconds the sweep may take (default 330).
#   CAMERAS_INPUTS, CAMERAS_DECODE, CAMERAS_MODES, CAMERAS_NS
#                   stage cameras: bench_cameras.py's --inputs, --decode, --modes and --ns
#                   (defaults: 1080p,720p; nvdec,process-nvdec,mixed,process,cpu; many,per-camera;
#                   1,8,16,...,300, as bench_cameras.py's own), e.g. CAMERAS_NS=48,56,64,80
#                   to start near the last capacity measured (BENCHMARKS.md) instead of at 1.
#   BASELINE        a checkout of the tree to compare with (e.g. main): its tools/bench_runtime.py
#                   and tools/bench_postprocess.py run with the same arguments right before ours,
#                   in the same call, on the same card, so the JSON files compare row by row (see
#                   the row names below).
#   XINFER_SHARED_DATA  the shared data folder (default: ./shared/data, else ../shared/data).
#
# Needs: Python 3.12 with torch (CUDA), cuda-bindings, numpy, onnx, onnxruntime, uvloop, pytest;
# PyAV is installed here from the wheel carried in .whl/ (no network) when it is missing, or comes
# unpacked from .whl/av-site.tar.xz. Archives of tools/make_site_archive.sh (.whl/NAME-site.tar.xz)
# are unpacked into /tmp/site, which outlives the call while the machine stays warm: PyAV, Ray and
# the checkout do not fit one call's 64 MiB, so the fleet stage runs in a second call on the same
# machine: first `bash tools/gpu_check.sh tests` carrying .whl/av-site.tar.xz, then
# `bash tools/gpu_check.sh fleet` carrying .whl/ray-site.tar.xz.
# The benchmark clips are made here with PyAV (tools/make_bench_clip.py): the shared clip
# car-detection.mp4 scaled to 1920x1080 and 1280x720, looped to 600 frames, H.264.
#
# Row names that changed since the runtime kept one upload path (old -> new), for a BASELINE run:
#   "<res> pre-decoded NV12, pageable" / "ours, window packed into staging (upload=pack)"
#                                      -> "<res> pre-decoded NV12" / "ours"
#   "<res> pre-decoded NV12, in pinned memory" / "ours, one at a time"
#                                      -> "<res> pre-decoded NV12" / "ours, one at a time"
#   "ours: engine.stream, batch=N, copy_on=worker" -> "ours: engine.stream, batch=N"
#   "ours: GpuRunner fed pageable planes"          -> "ours: GpuRunner fed decoded planes"
#   (new: "<res> pre-decoded NV12" / "ours, batch=4"; the NVDEC and decode-alone rows keep
#   their names.)
set -uo pipefail

STAGE="${1:-all}"
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
status=0

# Packages carried as tools/make_site_archive.sh archives (.whl/NAME-site.tar.xz) are unpacked into
# /tmp/site, less the packages this machine already has; /tmp/site stays while the machine is warm,
# so a later call (carrying another archive) still finds them.
site=/tmp/site
for archive in .whl/*-site.tar.xz; do
    [ -e "$archive" ] || continue
    rm -rf "$site.new" && mkdir -p "$site.new" "$site" \
        && tar -xJf "$archive" -C "$site.new" \
        && env -u PYTHONPATH python3 tools/gpu_site.py "$site.new" \
        && cp -a "$site.new/." "$site/" && rm -rf "$site.new" \
        || { echo "cannot unpack $archive into $site" >&2; exit 2; }
done
[ -d "$site" ] && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

if ! python3 -c "import av" 2>/dev/null; then
    wheels=(.whl/av-*.whl)
    if [ -e "${wheels[0]}" ]; then
        python3 -m pip install --quiet --no-index --no-deps "${wheels[@]}" \
            || python3 -m pip install --quiet --no-index --no-deps --break-system-packages "${wheels[@]}"
    fi
    python3 -c "import av" || { echo "PyAV is missing and no .whl/av-*.whl installs" >&2; exit 2; }
fi

if [ -z "${XINFER_SHARED_DATA:-}" ]; then
    for candidate in "$PWD/shared/data" "$PWD/../shared/data"; do
        if [ -d "$candidate" ]; then XINFER_SHARED_DATA="$candidate"; break; fi
    done
fi
export XINFER_SHARED_DATA="${XINFER_SHARED_DATA:-$PWD/shared/data}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'EOF' | tee "$OUT/environment.txt"
import platform, sys
print("python", sys.version.split()[0], platform.machine())
for name in ("torch", "torchvision", "av", "numpy", "onnxruntime", "uvloop", "cuda.bindings"):
    try:
        module = __import__(name, fromlist=["_"])
        print(name, getattr(module, "__version__", "?"))
    except ImportError as exc:
        print(name, "missing:", exc)
try:
    import torch
    print("card", torch.cuda.get_device_name(0))
except Exception as exc:  # noqa: BLE001
    print("card unknown:", exc)
EOF

if [ "$STAGE" = all ] || [ "$STAGE" = tests ]; then
    python3 -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" 2>&1 \
        | tee "$OUT/gpu_tests.log"
    rc=${PIPESTATUS[0]}
    echo "gpu tests: exit $rc" | tee -a "$OUT/gpu_tests.log"
    [ "$rc" -eq 0 ] || status=1
    # The tests that need torch but no GPU (CI has no torch): the detect stage on CPU tensors.
    python3 -m pytest -q -p no:cacheprovider tests/test_detect_torch.py 2>&1 \
        | tee -a "$OUT/gpu_tests.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

clips="${TMPDIR:-/tmp}/xinfer_bench_clips"
if [ "$STAGE" = cameras ]; then
    # Batched throughput against the engine alone at each batch size (about 1 minute).
    python3 tools/bench_batching.py --json "$OUT/batching.json" 2>&1 | tee "$OUT/batching.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    # Makes the clips it needs (the same files as the bench stage) in $clips.
    python3 tools/bench_cameras.py --clips "$clips" --budget "${CAMERAS_BUDGET:-330}" \
        --inputs "${CAMERAS_INPUTS:-1080p,720p}" \
        --decode "${CAMERAS_DECODE:-nvdec,process-nvdec,mixed,process,cpu}" \
        --modes "${CAMERAS_MODES:-many,per-camera}" \
        --ns "${CAMERAS_NS:-1,8,16,32,64,100,150,200,250,300}" \
        --json "$OUT/cameras.json" 2>&1 \
        | tee "$OUT/cameras.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ "$STAGE" = gil ]; then
    for k in 1 2; do
        for interval in 0.005 0.0005; do
            python3 tools/bench_batching.py --batches 8,32 --frames 150 \
                --switch-interval "$interval" --json "$OUT/gil_batching_${interval}_$k.json" \
                > "$OUT/gil_batching_${interval}_$k.log" 2>&1 || status=1
            python3 tools/bench_postprocess.py --frames 40 --reps 10 \
                --switch-interval "$interval" --json "$OUT/gil_postprocess_${interval}_$k.json" \
                > "$OUT/gil_postprocess_${interval}_$k.log" 2>&1 || status=1
            python3 tools/bench_gil_calls.py --switch-interval "$interval" \
                --json "$OUT/gil_calls_${interval}_$k.json" \
                > "$OUT/gil_calls_${interval}_$k.log" 2>&1 || status=1
            echo "gil: interval $interval, run $k done (status $status)"
        done
    done
fi

if [ "$STAGE" = fleet ]; then
    python3 -c "import ray" || { echo "Ray is missing: carry .whl/ray-site.tar.xz" \
        "(bash tools/make_site_archive.sh ray==VERSION ...; see that file)" >&2; exit 2; }
    python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_fleet_ray.py 2>&1 \
        | tee "$OUT/fleet_tests.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    python3 tools/bench_fleet.py --backend torch --json "$OUT/fleet.json" 2>&1 \
        | tee "$OUT/fleet.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    python3 tools/bench_fleet.py --polls 2>&1 | tee "$OUT/fleet_polls.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ "$STAGE" = all ] || [ "$STAGE" = bench ] || [ "$STAGE" = repeat ]; then
    mkdir -p "$clips"
    source_clip="$XINFER_SHARED_DATA/video/car-detection.mp4"
    for size in "1080p 1920 1080" "720p 1280 720"; do
        set -- $size
        if [ ! -s "$clips/car_$1.mp4" ]; then
            python3 tools/make_bench_clip.py "$source_clip" "$clips/car_$1.mp4" "$2" "$3" 600 \
                || { echo "could not make car_$1.mp4 from $source_clip" >&2; exit 2; }
        fi
    done
    if python3 -c "import torchvision" 2>/dev/null; then
        engines="${ENGINES:-spin-1ms,resnet18}"
        real="${REAL_ENGINES:-resnet18}"
    else
        engines="${ENGINES:-spin-0.2ms,spin-1ms}"
        real="${REAL_ENGINES:-spin-1ms}"
    fi
    args=(--engines "$engines" --real-engines "$real" --frames "${FRAMES:-300}"
          --clip-1080p "$clips/car_1080p.mp4" --clip-720p "$clips/car_720p.mp4")
fi

if [ "$STAGE" = repeat ]; then
    [ -n "${BASELINE:-}" ] || { echo "stage repeat needs BASELINE" >&2; exit 2; }
    for k in $(seq 1 "${REPEATS:-3}"); do
        for tree in before after; do
            script=tools/bench_runtime.py
            [ "$tree" = before ] && script="$BASELINE/tools/bench_runtime.py"
            python3 "$script" "${args[@]}" --only-real --json "$OUT/repeat_${tree}_$k.json" \
                > "$OUT/repeat_${tree}_$k.log" 2>&1
            rc=$?
            echo "repeat $k $tree: exit $rc"
            [ "$rc" -eq 0 ] || status=1
        done
    done
    python3 tools/bench_pack.py --clip-1080p "$clips/car_1080p.mp4" \
        --clip-720p "$clips/car_720p.mp4" --json "$OUT/pack.json" 2>&1 | tee "$OUT/pack.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
    if [ -n "${BASELINE:-}" ]; then
        python3 "$BASELINE/tools/bench_runtime.py" "${args[@]}" --json "$OUT/bench_before.json" \
            2>&1 | tee "$OUT/bench_before.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    fi
    python3 tools/bench_runtime.py "${args[@]}" --json "$OUT/bench_after.json" 2>&1 \
        | tee "$OUT/bench_after.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    if [ -n "${BASELINE:-}" ]; then
        python3 "$BASELINE/tools/bench_postprocess.py" --json "$OUT/postprocess_before.json" \
            2>&1 | tee "$OUT/postprocess_before.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    fi
    python3 tools/bench_postprocess.py --json "$OUT/postprocess.json" 2>&1 \
        | tee "$OUT/postprocess.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit "$status"
