"""How far the CPU image tower is from what this CPU can do: a GEMM ceiling and the encoders' share.

  gemm     GFLOP/s of one large matrix product of a ViT's shapes (tokens of a batch x width,
           times width x 4*width, the MLP's first layer, the largest GEMM of the tower) in ONNX
           Runtime itself: MatMul in float32, MatMulInteger (uint8 x int8 -> int32, what dynamic
           int8 runs) and QLinearMatMul (uint8 x int8 -> uint8, what static QDQ int8 runs after
           fusion), with 1 and 2 intra-op threads. The operands are inputs and initialisers, so
           the figure is the kernel's, not quantisation's or Python's.
  text     one-text queries through the ONNX text tower, float32 against its products in int8.
  profile  (after tower) each int8 graph's time by operator type, from onnxruntime's profiler.
  settings (after tower) ms per image of today's int8 graph by batch, threads and thread spinning.
  tower    images/s of the image tower of ``--arch`` (random weights, ``--pretrained none``) at
           batch ``--batch`` for each variant onnx_image builds (float32, dynamic int8, static
           int8, OpenVINO where installed), and its achieved GFLOP/s from the model's own
           FLOP count (2 x multiply-adds of every matrix product, attention included).

Runs alternate (one round times every contender once, ``--repeats`` rounds; medians), so a
burst of load from other processes hits each alike; ``uptime``'s load is recorded before and after.

    python scripts/bench_ceiling.py --sections gemm --repeats 7
    python scripts/bench_ceiling.py --sections tower --arch ViT-B-32-256 --repeats 5 --work /tmp/ceiling
    python scripts/bench_ceiling.py --sections profile,settings --arch ViT-B-32-256 --work /tmp/ceiling  # after tower

Prints tables and one JSON line (``--json-out`` writes it to a file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import machine, median  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- the GEMM ceiling ---------------------------------------------------------------------------------
def gemm_model(kind: str, m: int, k: int, n: int) -> bytes:
    """A one-node graph A (m, k) x B (k, n) with B an initialiser, as a quantised model stores weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if kind == "float32":
        a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n), np.float32), "B"))
        nodes.append(helper.make_node("MatMul", ["A", "B"], ["Y"]))
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])
    else:
        a = helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])
        inits.append(numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "B"))
        if kind == "matmulinteger":
            inits.append(numpy_helper.from_array(np.array(128, np.uint8), "a_zero"))
            nodes.append(helper.make_node("MatMulInteger", ["A", "B", "a_zero"], ["Y"]))
            y = helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])
        else:  # qlinearmatmul
            inits += [numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
                      numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
                      numpy_helper.from_array(np.array(0.01, np.float32), "b_scale"),
                      numpy_helper.from_array(np.array(0, np.int8), "b_zero"),
                      numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
                      numpy_helper.from_array(np.array(128, np.uint8), "y_zero")]
            nodes.append(helper.make_node("QLinearMatMul", ["A", "a_scale", "a_zero", "B", "b_scale", "b_zero",
                                                            "y_scale", "y_zero"], ["Y"]))
            y = helper.make_tensor_value_info("Y", TensorProto.UINT8, [m, n])
    graph = helper.make_graph(nodes, "gemm", [a], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def ort_session(model: bytes | str, threads: int, spin: str = "0"):
    """An onnxruntime session set as onnx_export.session sets indexing's (spinning off unless ``spin``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def gemm(repeats: int, tokens: int, width: int) -> list[dict]:
    m, k, n = tokens, width, 4 * width
    flops = 2.0 * m * k * n
    rng = np.random.default_rng(1)
    inputs = {"float32": rng.standard_normal((m, k), np.float32),
              "matmulinteger": rng.integers(0, 256, (m, k), dtype=np.uint8),
              "qlinearmatmul": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    contenders = {(kind, threads): ort_session(gemm_model(kind, m, k, n), threads)
                  for kind in inputs for threads in (1, 2)}
    times: dict = {key: [] for key in contenders}
    for key, session in contenders.items():
        session.run(None, {"A": inputs[key[0]]})
    for _ in range(repeats):
        for key, session in contenders.items():
            runs = max(1, int(3e9 // flops))  # about 3 GFLOP a sample: tens of ms
            started = time.perf_counter()
            for _ in range(runs):
                session.run(None, {"A": inputs[key[0]]})
            times[key].append((time.perf_counter() - started) / runs)
    return [{"op": kind, "threads": threads, "shape": [m, k, n], "ms": round(median(t) * 1000, 2),
             "gflops": round(flops / median(t) / 1e9, 1)} for (kind, threads), t in times.items()]


# -- the image tower ---------------------------------------------------------------------------------
def tower_flops(model) -> float:
    """FLOPs (2 x multiply-adds) of one image through an open_clip VisionTransformer, counted from
    its configuration: patch embedding, the blocks' projections and MLPs, attention's two products."""
    visual = model.visual
    width = visual.conv1.out_channels
    patch = visual.conv1.kernel_size[0]
    grid = visual.grid_size[0] * visual.grid_size[1]
    tokens = grid + 1
    blocks = visual.transformer.resblocks
    mlp = blocks[0].mlp.c_fc.out_features
    macs = grid * 3 * patch * patch * width  # patch embedding
    per_block = tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width
    macs += len(blocks) * per_block
    macs += width * visual.proj.shape[1]  # final projection (one token)
    return 2.0 * macs


def real_pixels(work: Path, pixels: dict, n: int) -> np.ndarray:
    """``n`` decoded photo-like JPEGs (scripts/photo_corpus.py, 640x480) plus the test suite's
    photos, as the decode workers hand them to the encoder."""
    from photo_corpus import make_photo_corpus

    from mmsearch.media.image import PixelTransform, load_image

    paths = make_photo_corpus(work / "photos", n, (640, 480), seed=0)
    paths += sorted((Path(__file__).resolve().parent.parent / "tests" / "data" / "photos").glob("*.jpg"))
    transform = PixelTransform(int(pixels["resize"]), int(pixels["crop"]), int(pixels["resample"]),
                               tuple(pixels["mean"]), tuple(pixels["std"]))
    return np.stack([transform.apply(load_image(p, transform.crop)) for p in paths])


def contenders(work: Path, record: dict, calibration: np.ndarray, threads: int) -> dict:
    """name -> a function of a uint8 batch giving vectors: ONNX Runtime float32, the int8 graph
    quantised as before (every operator), onnx_image's int8 graph, a static QDQ int8 graph
    calibrated on real decoded images, and OpenVINO on the float32 and QDQ graphs where installed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from benchutil import quantize_static_qdq
    from mmsearch.encoders import onnx_image

    fp32 = work / record["file"]
    before, qdq = work / "int8-all-ops.onnx", work / "int8-static-qdq.onnx"
    with onnx_image._root_logger_silenced():
        if not before.exists():
            quantize_dynamic(str(fp32), str(before), weight_type=QuantType.QInt8)
        if not qdq.exists():
            quantize_static_qdq(fp32, qdq, calibration, onnx_image.INT8_OPS)

    def ort(path: Path):
        session = ort_session(str(path), threads)
        return lambda x: session.run(None, {"pixels": x})[0]

    now = ort(work / record["int8"]["file"])
    runners = {"ort float32": ort(fp32), "ort int8 before (all ops)": ort(before),
               "ort int8 now (MatMul/Gemm)": now, "ort static int8 (QDQ)": ort(qdq),
               # What OnnxImageEncoder does with a batch: session runs of onnx_image.BATCH images.
               f"ort int8 now, {onnx_image.BATCH} a run": lambda x: np.concatenate(
                   [now(x[i:i + onnx_image.BATCH]) for i in range(0, len(x), onnx_image.BATCH)])}
    try:
        import openvino
    except ImportError:
        print("openvino is not installed: not measured", file=sys.stderr)
        return runners
    core = openvino.Core()
    for name, path in (("openvino float32 graph", fp32), ("openvino static int8 (QDQ)", qdq)):
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": threads})
        runners[name] = (lambda c: lambda x: c(x)[0])(compiled)
    return runners


def tower(arch: str, repeats: int, batch: int, work: Path, threads: int) -> dict:
    from mmsearch.encoders import ModelSpec, TorchEncoder, onnx_image
    from mmsearch.encoders.onnx_export import l2

    work.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec.resolve(arch, "none")
    record_path = work / f"{arch}.record.json"
    encoder = TorchEncoder(spec, "cpu", "off")
    flops = tower_flops(encoder.model)
    if not record_path.exists():
        record = onnx_image.export_image_encoder(encoder, work, spec.identity()["fingerprint"])
        record_path.write_text(json.dumps(record))
    record = json.loads(record_path.read_text())
    if onnx_image.int8_outdated(record):  # an export made before today's int8 method
        record = onnx_image.requantise(work, record)
        record_path.write_text(json.dumps(record))
    del encoder
    pixels = real_pixels(work, record["pixels"], 59)  # 64 with the 5 test photos
    calibration, timed = pixels[:32], pixels[-batch:]
    runners = contenders(work, record, calibration, threads)

    def vectors(run) -> np.ndarray:
        return l2(np.concatenate([run(pixels[i:i + 16]) for i in range(0, len(pixels), 16)]))

    reference = vectors(runners["ort float32"])
    agreement = {}
    for name, run in runners.items():
        got = vectors(run)  # also the warm-up
        agreement[name] = {"min_cosine": round(float((got * reference).sum(axis=1).min()), 5),
                           "top10_overlap": round(onnx_image.top_overlap(reference, got), 3)}
    times: dict = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            run(timed)
            times[name].append(time.perf_counter() - started)
    base = median(times["ort int8 before (all ops)"])
    rows = []
    for name, t in times.items():
        seconds = median(t)
        rows.append({"variant": name, "images_per_s": round(batch / seconds, 2), "ms_per_image": round(seconds / batch * 1000, 2),
                     "gflops": round(flops * batch / seconds / 1e9, 1), "vs_int8_before": round(base / seconds, 2),
                     **agreement[name]})
    return {"arch": arch, "batch": batch, "threads": threads, "gflop_per_image": round(flops / 1e9, 2),
            "agreement_images": len(pixels), "rows": rows}


def profile(work: Path, record: dict, batch: int, threads: int) -> dict:
    """Each int8 graph's time by operator type (onnxruntime's profiler), in percent."""
    import collections

    import onnxruntime as ort

    from mmsearch.encoders import onnx_image

    pixels = onnx_image.probe_pixels(int(record["pixels"]["crop"]), batch, seed=3)
    shares = {}
    for name, path in (("int8 before (all ops)", work / "int8-all-ops.onnx"), ("int8 now", work / record["int8"]["file"])):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = threads, 3
        options.enable_profiling, options.profile_file_prefix = True, str(work / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(4):
            session.run(None, {"pixels": pixels})
        events = json.loads(Path(session.end_profiling()).read_text())
        spent = collections.Counter()
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                spent[event["args"]["op_name"]] += event["dur"]
        total = sum(spent.values())
        shares[name] = {op: round(100 * t / total, 1) for op, t in spent.most_common(10)}
    return shares


def settings(work: Path, record: dict, repeats: int) -> list[dict]:
    """ms per image of today's int8 graph by batch size, thread count and thread spinning."""
    from mmsearch.encoders import onnx_image

    pixels = onnx_image.probe_pixels(int(record["pixels"]["crop"]), 32, seed=3)
    sessions = {}
    for threads, spin in ((2, "0"), (2, "1"), (1, "0")):
        session = ort_session(str(work / record["int8"]["file"]), threads, spin)
        sessions[(threads, spin)] = session
    cases = [(t, spin, b) for (t, spin) in sessions for b in (4, 8, 16, 32)]
    times: dict = {case: [] for case in cases}
    for t, spin, b in cases:
        sessions[(t, spin)].run(None, {"pixels": pixels[:b]})
    for _ in range(repeats):
        for t, spin, b in cases:
            started = time.perf_counter()
            for i in range(0, len(pixels), b):
                sessions[(t, spin)].run(None, {"pixels": pixels[i:i + b]})
            times[(t, spin, b)].append((time.perf_counter() - started) / len(pixels) * 1000)
    return [{"threads": t, "spinning": spin == "1", "batch": b, "ms_per_image": round(median(times[(t, spin, b)]), 2)}
            for t, spin, b in cases]


def text(arch: str, repeats: int, work: Path) -> dict:
    """One-text queries through the ONNX text tower in float32 (what queries run today) and with
    its matrix products in dynamic int8 (not wired in: measured here only), ms a query."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mmsearch.encoders import ModelSpec, TorchEncoder, onnx_image, onnx_text
    from mmsearch.encoders.onnx_export import available_cpus, l2, session

    work.mkdir(parents=True, exist_ok=True)
    record_path = work / f"{arch}.text-record.json"
    if not record_path.exists():
        spec = ModelSpec.resolve(arch, "none")
        record = onnx_text.export_text_encoder(TorchEncoder(spec, "cpu", "off"), work, spec.identity()["fingerprint"])
        record_path.write_text(json.dumps(record))
    record = json.loads(record_path.read_text())
    fp32, int8 = work / record["file"], work / "text-int8.onnx"
    if not int8.exists():
        with onnx_image._root_logger_silenced():
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=list(onnx_image.INT8_OPS))
    words = "dog cat beach red car mountain sunset snow sofa sleeping photo of a on the with at in city night river boat".split()
    rng = np.random.default_rng(0)
    tokens = onnx_text.OnnxTextEncoder(work, record).tokenizer(
        [" ".join(rng.choice(words, int(rng.integers(2, 9)))) for _ in range(64)])
    sessions = {"float32": session(fp32, available_cpus()), "int8 (MatMul/Gemm)": session(int8, available_cpus())}
    vectors = {name: l2(np.concatenate([s.run(None, {"tokens": tokens[i:i + 1]})[0] for i in range(len(tokens))]))
               for name, s in sessions.items()}
    times: dict = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            started = time.perf_counter()
            for i in range(8):
                s.run(None, {"tokens": tokens[i:i + 1]})
            times[name].append((time.perf_counter() - started) / 8 * 1000)
    reference = vectors["float32"]
    return {name: {"ms_per_query": round(median(times[name]), 1),
                   "min_cosine": round(float((vectors[name] * reference).sum(axis=1).min()), 5),
                   "top10_overlap": round(onnx_image.top_overlap(reference, vectors[name]), 3)} for name in sessions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="gemm,tower")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--arch", default="ViT-B-32-256")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of the towers (0: every core)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmsearch-ceiling"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    out: dict = {"machine": machine(), "load_before": load(), "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if "gemm" in sections:
        out["gemm"] = gemm(args.repeats, tokens=args.batch * 65, width=768)
        print(f"{'op':15} thr {'ms':>8} {'GFLOP/s':>8}   shape (m, k, n) = {out['gemm'][0]['shape']}")
        for row in out["gemm"]:
            print(f"{row['op']:15} {row['threads']:3} {row['ms']:8.2f} {row['gflops']:8.1f}")
    if "tower" in sections:
        from mmsearch.encoders import onnx_export

        threads = args.threads or onnx_export.available_cpus()
        out["tower"] = tower(args.arch, args.repeats, args.batch, args.work.resolve(), threads)
        print(f"{args.arch}, batch {args.batch}, {threads} threads, {out['tower']['gflop_per_image']} GFLOP an image")
        print(f"{'variant':28} {'img/s':>7} {'ms/img':>7} {'GFLOP/s':>8} {'vs before':>9} {'min cos':>8} {'top-10':>6}")
        for row in out["tower"]["rows"]:
            print(f"{row['variant']:28} {row['images_per_s']:7.2f} {row['ms_per_image']:7.2f} {row['gflops']:8.1f} "
                  f"{row['vs_int8_before']:9.2f} {row['min_cosine']:8.5f} {row['top10_overlap']:6.3f}")
    if sections & {"profile", "settings"}:
        record = json.loads((args.work.resolve() / f"{args.arch}.record.json").read_text())  # made by --sections tower
        if "profile" in sections:
            out["profile"] = profile(args.work.resolve(), record, args.batch, 2)
            for name, shares in out["profile"].items():
                print(f"{name}: " + ", ".join(f"{op} {share}%" for op, share in shares.items()))
        if "settings" in sections:
            out["settings"] = settings(args.work.resolve(), record, args.repeats)
            for row in out["settings"]:
                print(f"threads {row['threads']} spinning {row['spinning']!s:5} batch {row['batch']:2}: "
                      f"{row['ms_per_image']:7.2f} ms an image")
    if "text" in sections:
        out["text"] = text(args.arch, args.repeats, args.work.resolve())
        for name, row in out["text"].items():
            print(f"text tower {name:20} {row['ms_per_query']:7.1f} ms a query, min cosine {row['min_cosine']:.5f}, "
                  f"top-10 overlap {row['top10_overlap']:.3f}")
    out["load_after"] = load()
    print(f"load before {out['load_before']}, after {out['load_after']}")
    print(json.dumps(out))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
