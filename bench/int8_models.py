"""Which int8 EfficientNet-Lite0 embeds a photo the same on every CPU (issue 24).

    .venv/bin/python bench/int8_models.py [--held-out 40] [--kernels host,avx2,sse4.1]

Each candidate quantisation (``lookalike_local.efficientnet.Int8Recipe``, and whether the
session converts U8S8 to U8U8, ``session.x64quantprecision``: never, always, or where the
U8S8 kernels saturate, the embedder's rule) is built from the float model and run by
onnxruntime on each x86 kernel family it has:
- ``host``: this CPU (its ``lscpu`` model and the flags that choose the kernel are recorded);
- ``avx2``: an AVX2 CPU without AVX-512 or VNNI (``qemu-x86_64 -cpu Haswell``, Debian's
  qemu-user), where onnxruntime's U8S8 kernels add pairs of products in 16 bits;
- ``sse4.1``: an SSE4.1 CPU (``-cpu Nehalem``).
Emulation changes which kernels onnxruntime picks (it reads CPUID), not what they compute.

Reported per candidate and kernel, on the embedding the product stores (GeM-pooled crop and
pad views, summed):
- cosine to a saturation-free reference of the same quantised graph
  (``lookalike_local.qdq_reference``: its integer arithmetic in float64): min over every
  calibration photo, the 12 catalog fixtures and the held-out photos;
- cosine to the float32 model on held-out photos (validation photos of
  ../shared/data/clothing, never calibrated on): mean and min;
- ms per image on one thread on the host (both views, batch of 1; median of 20).
Results: bench/results/int8_models.json.

    .venv/bin/python bench/int8_models.py --avx2-instructions

counts the instructions per image of float32, the model before issue 24 and the chosen one on
an AVX2 CPU (valgrind's), where this host cannot time them: bench/results/int8_instructions.json.

    .venv/bin/python bench/int8_models.py --speed-only

times float32 and every candidate alone on this host: bench/results/int8_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clothing"
RESULTS = ROOT / "bench" / "results"
FIXTURES = ROOT / "tests" / "fixtures" / "images"
EMULATED = {"avx2": "Haswell", "sse4.1": "Nehalem"}
KERNEL_FLAGS = ("sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


# How the session treats U8S8: "never" converted, "always" to U8U8 (session.x64quantprecision),
# or "auto", the embedder's rule: converted where the kernels saturate (saturating_int8_kernels).
Conversion = Literal["never", "always", "auto"]


def candidates() -> dict[str, tuple[Any, Conversion, bool]]:
    """name: (recipe, conversion, whether to run it on the emulated CPUs too)."""
    from lookalike_local.efficientnet import Int8Recipe

    return {
        "u8s8, head float (before issue 24)": (Int8Recipe(keep_float="head"), "never", True),
        "u8s8, head float, 7-bit weights": (Int8Recipe(reduce_range="all", keep_float="head"), "never", True),
        "u8s8, head float, 7-bit 1x1 and stem weights": (Int8Recipe(reduce_range="gemm", keep_float="head"), "never",
                                                         True),
        "u8u8, head float": (Int8Recipe(weights="u8", keep_float="head"), "never", True),
        "u8s8, head float, U8U8 everywhere": (Int8Recipe(keep_float="head"), "always", False),
        "u8s8, head float, U8U8 where U8S8 saturates (chosen)": (Int8Recipe(), "auto", True),
        "u8s8, tail float, U8U8 where U8S8 saturates": (Int8Recipe(keep_float="tail"), "auto", True),
    }


def cpu() -> dict[str, object]:
    model, flags = platform.processor(), set()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"model": model, "flags": sorted(flag for flag in KERNEL_FLAGS if flag in flags)}


def session(model: Path, conversion: Conversion) -> Any:
    import onnxruntime as ort

    from lookalike_local.onnx_runtime import saturating_int8_kernels

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    if conversion == "always" or (conversion == "auto" and saturating_int8_kernels()):
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def pooled(maps: np.ndarray) -> np.ndarray:
    from lookalike_local.efficientnet import gem, l2_normalize

    return l2_normalize(gem(maps, 3.0))


def run_views(network: Any, views: np.ndarray) -> np.ndarray:
    """Each view's pooled, normalised features, an image (two views) at a time; ``network``
    is an onnxruntime session or the reference, which answer alike."""
    return np.concatenate([pooled(network.run(["features"], {"pixels": views[i:i + 2]})[0])
                           for i in range(0, len(views), 2)])


def embeddings(view_vectors: np.ndarray) -> np.ndarray:
    """Per photo: its crop and pad views summed and normalised, as the embedder does."""
    from lookalike_local.efficientnet import l2_normalize

    return l2_normalize(view_vectors.reshape(-1, 2, view_vectors.shape[1]).sum(axis=1))


def worker(args: argparse.Namespace) -> None:
    network = session(Path(args.worker), args.conversion)
    if args.count_runs:  # under valgrind: the same image, count_runs times
        from lookalike_local.efficientnet import CALIBRATION

        views = views_of(sorted(CALIBRATION.glob("*.jpg"))[:1])
        for _ in range(args.count_runs):
            network.run(["features"], {"pixels": views})
        return
    np.save(args.out, run_views(network, np.load(args.inputs)))


def avx2_instructions() -> None:
    """Instructions per image (both views, one thread) on an AVX2 CPU without VNNI, counted by
    valgrind's callgrind, whose CPU has AVX2 and no AVX-512: a run of 3 images minus a run of
    1, halved, so loading and start-up cancel. Counted, so repeatable on a busy machine; it is
    a proxy for time, not a time (the U8U8 and float kernels retire different instructions)."""
    from lookalike_local.efficientnet import ONNX_NAME, Int8Recipe, build_int8, build_onnx

    if not shutil.which("valgrind"):
        sys.exit("--avx2-instructions needs valgrind (Debian's valgrind)")
    work = Path(tempfile.mkdtemp(prefix="int8-instructions-"))
    float_model = build_onnx(work / ONNX_NAME)
    configs: dict[str, tuple[Path, Conversion]] = {
        "float32": (float_model, "never"),
        "u8s8, head float (before issue 24), saturating": (
            build_int8(work / "before.onnx", float_model, Int8Recipe(keep_float="head")), "never"),
        "u8s8, head float, U8U8 where U8S8 saturates (chosen)": (
            build_int8(work / "chosen.onnx", float_model, Int8Recipe()), "auto"),
    }

    def count(model: Path, conversion: Conversion, runs: int) -> int:
        out = work / f"{model.stem}-{runs}.callgrind"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                        "--worker", str(model), "--conversion", conversion, "--count-runs", str(runs)],
                       check=True, capture_output=True, timeout=3600)
        return next(int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("summary:"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = {name: (pool.submit(count, m, c, 1), pool.submit(count, m, c, 3)) for name, (m, c) in configs.items()}
        per_image = {name: round((three.result() - one.result()) / 2 / 1e6, 1) for name, (one, three) in counts.items()}
    shutil.rmtree(work, ignore_errors=True)
    report = {"cpu": "valgrind's (AVX2, no AVX-512, no VNNI)", "million_instructions_per_image": per_image}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_instructions.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, millions in per_image.items():
        print(f"{name:55} {millions:>8} M instructions per image on an AVX2 CPU")


def photos(held_out: int) -> tuple[list[Path], list[Path]]:
    from lookalike_local.efficientnet import CALIBRATION

    seen = sorted(CALIBRATION.glob("*.jpg")) + sorted(FIXTURES.rglob("*.jpg"))
    validation = sorted((DATA / "validation").rglob("*.jpg"))
    if len(validation) < held_out:
        sys.exit(f"need {held_out} validation photos under {DATA / 'validation'}")
    return seen, random.Random(24).sample(validation, held_out)


def views_of(paths: list[Path]) -> np.ndarray:
    from lookalike_local.efficientnet import preprocess

    return np.concatenate([preprocess([Image.open(p).convert("RGB")], 224, kind)
                           for p in paths for kind in ("crop", "pad")])


def speed(model: Path, conversion: Conversion, views: np.ndarray) -> float:
    s = session(model, conversion)
    times = []
    for i in range(22):
        start = time.perf_counter()
        s.run(["features"], {"pixels": views[2 * (i % 10):2 * (i % 10) + 2]})
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times[2:]), 1)


def speed_only() -> None:
    """ms per image on one thread for float32 and every candidate, on this host alone (the full
    run measures them while an emulator takes the other core)."""
    from lookalike_local.efficientnet import ONNX_NAME, build_int8, build_onnx

    seen, _ = photos(0)
    views = views_of(seen[:10])
    work = Path(tempfile.mkdtemp(prefix="int8-speed-"))
    float_model = build_onnx(work / ONNX_NAME)
    files: dict[Any, Path] = {}
    speeds = {"float32": speed(float_model, "never", views)}
    for name, (recipe, conversion, _) in candidates().items():
        if recipe not in files:
            files[recipe] = build_int8(work / f"int8-{len(files)}.onnx", float_model, recipe)
        speeds[name] = speed(files[recipe], conversion, views)
    shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_speed.json").write_text(json.dumps({"cpu": cpu(), "ms_per_image_1_thread": speeds}, indent=2)
                                             + "\n")
    for name, ms in speeds.items():
        print(f"{name:55} {ms:>6} ms per image, one thread")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--kernels", default="host,avx2,sse4.1")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--conversion", default="never", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--count-runs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--avx2-instructions", action="store_true",
                        help="instead: instructions per image on an AVX2 CPU, counted under valgrind")
    parser.add_argument("--speed-only", action="store_true",
                        help="instead: ms per image on one thread on this host, nothing else running")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.avx2_instructions:
        return avx2_instructions()
    if args.speed_only:
        return speed_only()

    from lookalike_local.efficientnet import ONNX_NAME, build_int8, build_onnx
    from lookalike_local.qdq_reference import QDQReference

    kernels = args.kernels.split(",")
    qemu = shutil.which("qemu-x86_64")
    if any(k in EMULATED for k in kernels) and not qemu:
        sys.exit("the avx2 and sse4.1 kernels need qemu-x86_64 (Debian's qemu-user), or pass --kernels host")
    seen, held_out = photos(args.held_out)
    n_seen = len(seen)
    work = Path(tempfile.mkdtemp(prefix="int8-models-"))
    inputs = work / "views.npy"
    views = views_of(seen + held_out)
    np.save(inputs, views)
    float_model = build_onnx(work / ONNX_NAME)
    float32 = embeddings(run_views(session(float_model, "never"), views))[n_seen:]
    float32_ms = speed(float_model, "never", views)
    recipes = candidates()
    files: dict[Any, Path] = {}
    for recipe, _, _ in recipes.values():
        if recipe not in files:
            files[recipe] = build_int8(work / f"int8-{len(files)}.onnx", float_model, recipe)

    def emulated(model: Path, conversion: Conversion, kernel: str) -> np.ndarray:
        out = work / f"{model.stem}-{conversion}-{kernel}.npy"
        subprocess.run([qemu, "-cpu", EMULATED[kernel], sys.executable, __file__, "--worker", str(model),
                        "--conversion", conversion, "--inputs", str(inputs), "--out", str(out)],
                       check=True, stderr=subprocess.DEVNULL, timeout=3600)
        return np.load(out)

    # The emulated runs take one core while this one computes the references.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = {(name, kernel): pool.submit(emulated, files[recipe], conversion, kernel)
                   for name, (recipe, conversion, emulate) in recipes.items() if emulate
                   for kernel in kernels if kernel in EMULATED}
        references = {recipe: embeddings(run_views(QDQReference(path), views)) for recipe, path in files.items()}
        results = []
        for name, (recipe, conversion, emulate) in recipes.items():
            row: dict[str, Any] = {"candidate": name, "recipe": vars(recipe), "u8u8_conversion": conversion,
                                   "ms_per_image_1_thread": speed(files[recipe], conversion, views)}
            for kernel in kernels:
                if kernel in EMULATED and not emulate:
                    continue
                got = embeddings(pending[(name, kernel)].result() if kernel in EMULATED
                                 else run_views(session(files[recipe], conversion), views))
                to_reference = np.sum(got * references[recipe], axis=1)
                to_float = np.sum(got[n_seen:] * float32, axis=1)
                row[kernel] = {"min_cos_to_reference": round(float(to_reference.min()), 4),
                               "min_cos_to_reference_held_out": round(float(to_reference[n_seen:].min()), 4),
                               "mean_cos_to_float32_held_out": round(float(to_float.mean()), 4),
                               "min_cos_to_float32_held_out": round(float(to_float.min()), 4)}
            results.append(row)
            print(json.dumps(row))
    shutil.rmtree(work, ignore_errors=True)
    report = {"cpu": cpu(), "photos": {"calibration_and_catalog": n_seen, "held_out": len(held_out)},
              "onnxruntime": __import__("onnxruntime").__version__,
              "float32_ms_per_image_1_thread": float32_ms, "candidates": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_models.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nCPU: {report['cpu']['model']} ({', '.join(report['cpu']['flags'])}); "
          f"onnxruntime {report['onnxruntime']}; float32 {float32_ms} ms/image")
    print(f"{'candidate':40} {'ms/img':>7} " + " ".join(f"{k + ' ref min':>14} {k + ' f32 mean/min':>18}"
                                                    for k in kernels))
    for row in results:
        cells = [f"{row[k]['min_cos_to_reference']:>14.4f} "
                 f"{row[k]['mean_cos_to_float32_held_out']:>10.4f}/{row[k]['min_cos_to_float32_held_out']:.4f}"
                 if k in row else f"{'-':>14} {'-':>18}" for k in kernels]
        print(f"{row['candidate']:40} {row['ms_per_image_1_thread']:>7} " + " ".join(cells))


if __name__ == "__main__":
    main()
