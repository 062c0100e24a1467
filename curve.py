"""
A tool, not a part of the model: the learning curve of a training stage. It tells a
compute-bound recipe (the figures still climb at the last point: more steps would pay)
from a design-bound one (they flatten or fall while the training loss goes on down).

    python train.py --stage gen --steps 14400 --keep_every 900 --out runs_curve  # ~2 h on 2 cores
    python curve.py --ckpt_dir runs_curve --data toy_data  # -> runs_curve/curve.md, curve.png

train.py --keep_every N keeps the weights every N steps as STAGE_stepN.pt beside the
stage's checkpoint (which needs the codec, CLAP and tokenizer of a pipeline run: link
them into the folder). Each kept checkpoint becomes one row: eval.eval_generation on
the held-out captions over --seeds sampling seeds (adherence, the caption's events
exactly right, the order of the "A, then B" captions, the length inside the layout's
range), beside the training and held-out losses the stage logged at that step and the
training minutes so far. The points of one run share its learning-rate schedule, so
the early ones are taken mid-schedule, before the cosine decay has annealed them.
Each point's scores are kept in curve_points.json beside the checkpoints, so running the
tool again while the stage still trains scores only the points kept since (a point is
scored again when its checkpoint file, --n_gen, --seeds or --cfg changed since).

The plot is written as a PNG by hand (zlib and a 3 x 5 pixel digit font) so the tool
needs nothing beyond numpy: x is training minutes, y is 0-100%, one line per figure in
the colours LINES names.
"""

import argparse
import glob
import json
import os
import re
import struct
import sys
import zlib

import numpy as np

from data import read_generation
from eval import SHARES, eval_generation
from sample import load_runtime
from utils import atomic_path, fail

LINES = {"score": ("adherence", "red", (200, 40, 40)), "events": ("events exactly right", "blue", (40, 90, 200)),
         "order": ("A-then-B order", "green", (40, 150, 60)),
         "length_ok": ("length in range", "grey", (150, 150, 150))}  # eval_generation's key -> label, colour
DIGITS = {"0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
          "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
          "8": "111101111101111", "9": "111101111001111"}  # 3 x 5 pixels, row by row


def png_bytes(pixels: np.ndarray) -> bytes:
    """An RGB image (H, W, 3) uint8 -> the bytes of a PNG file (8-bit truecolour, no filter).
    Each chunk is length, tag, data, CRC-32 of tag and data; the image data is every row
    behind a filter byte 0, zlib-compressed."""
    H, W, _ = pixels.shape

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(pixels, np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def plot(xs, series, width=640, height=400, margin=48):
    """Lines on a white canvas: xs (n,) minutes, series {name: (ys in 0..1, colour)} ->
    (height, width, 3) uint8. Grid lines every 25% and at 4 or 5 round x ticks, each
    labelled in digits (percent; minutes)."""
    img = np.full((height, width, 3), 255, np.uint8)
    x_max = max(float(max(xs)), 1e-9)
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300) if x_max / s <= 5)
    px = lambda x: margin + (width - 2 * margin) * x / x_max
    py = lambda y: height - margin - (height - 2 * margin) * y

    def text(s, x, y, scale=2):  # digits only, top-left at (x, y)
        for i, ch in enumerate(s):
            bits = np.array([int(b) for b in DIGITS[ch]], bool).reshape(5, 3)
            glyph = np.kron(bits, np.ones((scale, scale), bool))
            x0 = x + i * 4 * scale
            img[y:y + 5 * scale, x0:x0 + 3 * scale][glyph[:img.shape[0] - y, :img.shape[1] - x0]] = 0

    for k in range(5):  # 0, 25, 50, 75, 100 %
        y = int(round(py(k / 4)))
        img[y, margin:width - margin] = 220
        text(str(25 * k), 4, y - 5)
    for t in np.arange(0, x_max + 1e-9, step):
        x = int(round(px(t)))
        img[margin:height - margin, x] = 220
        text(str(int(t)), x - 4, height - margin + 8)
    img[height - margin, margin:width - margin] = img[margin:height - margin, margin] = 0
    for ys, colour in series.values():
        pts = [(px(x), py(y)) for x, y in zip(xs, ys) if np.isfinite(y)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:] or pts):  # a single point draws as a dot
            for t in np.linspace(0, 1, int(abs(x1 - x0) + abs(y1 - y0)) + 2):
                x, y = int(round(x0 + t * (x1 - x0))), int(round(y0 + t * (y1 - y0)))
                img[y - 1:y + 2, x - 1:x + 2] = colour
    return img


def kept_checkpoints(folder, stage):
    """STAGE_stepN.pt files of a folder, by step: [(N, path), ...]."""
    found = [(int(re.search(r"_step(\d+)\.pt$", p).group(1)), p)
             for p in glob.glob(os.path.join(folder, f"{stage}_step*.pt"))]
    return sorted(found)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_dir", required=True, help="the folder train.py --keep_every wrote")
    p.add_argument("--stage", default="gen")
    p.add_argument("--data", default="toy_data", help="the manifests the stage trained on (its held-out clips)")
    p.add_argument("--n_eval", type=int, default=50, help="held-out clips: the last n of the manifest (as train.py)")
    p.add_argument("--n_gen", type=int, default=50, help="held-out captions to generate for, per seed")
    p.add_argument("--seeds", type=int, default=2, help="sampling seeds per point")
    p.add_argument("--cfg", type=float, default=3.0)
    args = p.parse_args()
    if args.seeds < 1 or args.n_gen < 1:
        fail("--seeds and --n_gen must be 1 or more")
    points = kept_checkpoints(args.ckpt_dir, args.stage)
    if not points:
        fail(f"no {args.stage}_step*.pt in {args.ckpt_dir}: train with `python train.py --stage {args.stage} "
             f"--keep_every N --out {args.ckpt_dir}` first")
    manifest = os.path.join(args.data, "generation.jsonl")
    if not os.path.isfile(manifest):
        fail(f"{manifest}: not found; pass the --data the stage trained on")
    rows = read_generation(manifest)[-args.n_eval:][:args.n_gen]
    log_path = os.path.join(args.ckpt_dir, f"{args.stage}.log.jsonl")
    log = {r["step"]: r for r in map(json.loads, open(log_path))} if os.path.isfile(log_path) else {}
    scored_path = os.path.join(args.ckpt_dir, "curve_points.json")
    scored = {}  # "step" -> the settings and checkpoint file it was scored with, its scores
    try:
        if os.path.isfile(scored_path):
            with open(scored_path) as f:
                scored = json.load(f)
    except ValueError:
        fail(f"{scored_path} is not readable JSON; delete it and the points are scored again")
    table = []
    for step, path in points:
        settings = {"n_gen": len(rows), "seeds": args.seeds, "cfg": args.cfg,
                    "file": [os.path.getsize(path), os.path.getmtime(path)]}  # a checkpoint written anew is new
        if scored.get(str(step), {}).get("settings") == settings:
            row = dict(scored[str(step)]["scores"])
        else:
            try:
                rt = load_runtime(path, need_vae=False, need_clap=True)  # eval_generation scores with CLAP
            except (FileNotFoundError, ValueError) as e:
                fail(str(e))
            runs = [eval_generation(rt, rows, args.cfg, seed) for seed in range(args.seeds)]
            row = {k: float(np.mean([r[k] for r in runs])) for k in SHARES}
            row["sd"] = float(np.std([r["score"] for r in runs], ddof=1)) if args.seeds > 1 else float("nan")
            scored[str(step)] = {"settings": settings, "scores": dict(row)}
            with atomic_path(scored_path) as tmp, open(tmp, "w") as f:
                json.dump(scored, f, indent=1)
        entry = log.get(step, {})
        held = [r["eval_loss"] for s, r in log.items() if s <= step and "eval_loss" in r]
        row.update(step=step, minutes=entry.get("time", float("nan")) / 60, loss=entry.get("loss", float("nan")),
                   held_out=held[-1] if held else float("nan"))
        table.append(row)
        print(f"step {step}: adherence {100 * row['score']:.1f}%, events {100 * row['events']:.1f}%, "
              f"order {100 * row['order']:.1f}%, length {100 * row['length_ok']:.1f}%", flush=True)
    lines = [f"Learning curve of `{args.stage}` in `{args.ckpt_dir}`: {len(rows)} held-out captions x {args.seeds} "
             f"sampling seeds per point, CFG {args.cfg:g}; minutes of training on the machine that trained it.", "",
             "| step | minutes | training loss | held-out loss | adherence | events exactly right | A-then-B order "
             "| length in range |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        spread = f" +- {100 * r['sd']:.1f}" if np.isfinite(r["sd"]) else ""  # over seeds; one seed has none
        lines.append(f"| {r['step']} | {r['minutes']:.1f} | {r['loss']:.3f} | {r['held_out']:.3f} "
                     f"| {100 * r['score']:.1f}{spread}% | {100 * r['events']:.1f}% "
                     f"| {100 * r['order']:.1f}% | {100 * r['length_ok']:.1f}% |")
    lines += ["", "curve.png: x minutes, y percent; " + ", ".join(f"{label} {colour}" for label, colour, _ in LINES.values())]
    print("\n".join(lines))
    xs = [r["minutes"] if np.isfinite(r["minutes"]) else r["step"] for r in table]
    img = plot(xs, {k: ([r[k] for r in table], rgb) for k, (_, _, rgb) in LINES.items()})
    with atomic_path(os.path.join(args.ckpt_dir, "curve.png")) as tmp, open(tmp, "wb") as f:
        f.write(png_bytes(img))
    with atomic_path(os.path.join(args.ckpt_dir, "curve.md")) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
