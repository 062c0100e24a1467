"""UALM's training data on disk (the release's manifest formats; SPEC.md sections 5 and 11):
the resampler, audio loading, the manifests' writers and readers, the CLI.

    python data.py --out toy_data --n 1000 --seed 0

writes the toy world (toy/world.py) as the UALM release lays out real data, so the same
readers load either:

    generation.jsonl     {"location", "caption", "duration", "sample_rate", + rich caption,
                          vague prompt, ground truth, the 48 kHz master}   text -> audio
    understanding.json   [{"id", "sound", "duration", "conversations": [human, gpt]}]
                          captioning, rich captioning and question answering
    text.jsonl           {"input": [{"role": "user", "content"}], "output"}  text only
    reflection.jsonl     a flawed realisation (wav + ground truth) and its critique
    audio/  audio48k/  flawed/   16 kHz mono, 48 kHz stereo master, flawed 16 kHz mono

Locations are relative to the manifest's folder; the readers make them absolute.
"""
import argparse
import json
import os
from math import gcd
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from toy import world
from toy.world import LM_SR, MASTER_SR
from utils import atomic_path

RESAMPLE_ZEROS = 16        # zero crossings of the sinc on each side: longer = sharper cutoff
RESAMPLE_ROLLOFF = 0.94    # cutoff as a fraction of the lower of the two Nyquist rates
KAISER_BETA = 8.6          # window shape: ~80 dB stopband
SUBTYPE = "PCM_16"         # wav sample format written by the CLI

CAPTION_PROMPT = "Describe the audio in one sentence."  # the user's words of a captioning item
RICH_PROMPT = "Describe the audio with keywords, layout and description."  # ... of a rich-captioning item


# ----------------------------------------------------------------------------- audio
def resample(x, sr_in, sr_out):
    """Windowed-sinc polyphase resampling along the last axis: (48000 samples, 48000, 16000) -> 16000 samples.

    With sr_out/sr_in = up/down in lowest terms, output j = q*up + r sits at input position
    q*down + r*down/up; so output block q is one window of input starting at q*down, times a
    fixed (up, K) filter bank: the whole resampler is one strided conv1d with `up` channels.
    """
    if sr_in == sr_out:
        return np.asarray(x, np.float32)
    x = np.asarray(x, np.float32)
    g = gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    scale = min(1.0, up / down) * RESAMPLE_ROLLOFF      # cutoff, in cycles per input sample x 2
    half = int(np.ceil(RESAMPLE_ZEROS / scale))          # filter half-width in input samples
    taps = np.arange(-half + 1, half + down + 1)          # (K,) input offsets from q*down
    tau = np.arange(up)[:, None] * down / up - taps[None, :]   # (up, K) output - input position
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (tau / half) ** 2, 0, None))) / np.i0(KAISER_BETA)
    bank = (scale * np.sinc(scale * tau) * window * (np.abs(tau) < half)).astype(np.float32)
    n_out = int(np.ceil(x.shape[-1] * up / down))
    blocks = -(-n_out // up)
    right = (blocks - 1) * down + len(taps) - x.shape[-1] - half + 1
    flat = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 1, x.shape[-1])))
    flat = torch.nn.functional.pad(flat, (half - 1, right))                   # (B, 1, L')
    out = torch.nn.functional.conv1d(flat, torch.from_numpy(bank)[:, None], stride=down)  # (B, up, blocks)
    return out.transpose(1, 2).reshape(*x.shape[:-1], blocks * up)[..., :n_out].numpy()


def downmix(master):
    """The LM's view of a master: (2, 48000 * s) at 48 kHz -> (16000 * s,) mono at 16 kHz."""
    return resample(master.mean(axis=0), MASTER_SR, LM_SR)


def load_audio(path, sr=LM_SR, mono=True):
    """Read any wav/flac, resample to sr, optionally downmix: ('a.wav', 16000) -> (N,) float32.

    With mono=False the result is (channels, N). Unusable files raise an error that names
    the file and what to do about it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file; check the path (manifest locations are "
                                "relative to the manifest's folder).")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; regenerate it or drop it from the manifest.")
    try:
        x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"{path}: not a readable audio file ({e}); convert it to wav or flac.") from None
    if len(x) == 0:
        raise ValueError(f"{path}: the file holds no samples; regenerate it or drop it from the manifest.")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: the file holds NaN or infinite samples; re-export it as ordinary PCM or float audio.")
    x = x.T                                               # (channels, N)
    return resample(x.mean(axis=0) if mono else x, file_sr, sr)


# ----------------------------------------------------------------------------- examples
def make_example(seed, index):
    """Everything the world gives for clip `index`: (0, 7) -> dict with plan, texts, audio, flaw.

    Each part has its own Generator seeded with (seed, index, part), so clip i is the same
    whatever the number of clips, and changing a text template leaves the audio alone.
    """
    plan = world.make_plan(seed, index)
    text_rng, audio_rng, flaw_rng, task_rng = (np.random.default_rng([seed, index, k]) for k in (1, 2, 3, 4))
    master = world.render(plan, audio_rng)
    found = world.flaw(plan, flaw_rng)
    flawed = None
    if found:
        kind, flawed_plan, critique = found
        flawed = {"kind": kind, "plan": flawed_plan, "critique": critique,
                  "audio": downmix(world.render(flawed_plan, flaw_rng))}
    return {"id": f"clip_{index:06d}", "plan": plan, "caption": world.short_caption(plan, text_rng),
            "rich_caption": world.rich_caption(plan), "vague_prompt": world.vague_prompt(plan),
            "qa": world.questions(plan, text_rng), "master": master, "audio": downmix(master),
            "flaw": flawed, "text_task": world.arithmetic_task(task_rng)}


def _write_clip(args):
    """Worker: synthesise clip (seed, index, out), write its wavs, return its manifest records."""
    seed, index, out = args
    ex = make_example(seed, index)
    name, plan = ex["id"] + ".wav", ex["plan"]
    sf.write(str(out / "audio" / name), ex["audio"], LM_SR, subtype=SUBTYPE)
    sf.write(str(out / "audio48k" / name), ex["master"].T, MASTER_SR, subtype=SUBTYPE)
    gen = {"location": f"audio/{name}", "caption": ex["caption"], "duration": plan["duration"],
           "sample_rate": LM_SR, "id": ex["id"], "rich_caption": ex["rich_caption"],
           "vague_prompt": ex["vague_prompt"], "master_location": f"audio48k/{name}",
           "master_sample_rate": MASTER_SR, "layout": plan["layout"], "events": plan["events"]}
    talks = [("caption", CAPTION_PROMPT, ex["caption"]), ("rich_caption", RICH_PROMPT, ex["rich_caption"])]
    talks += [(f"qa{k}", q, a) for k, (q, a) in enumerate(ex["qa"])]
    und = [{"id": f"{ex['id']}_{task}", "sound": f"audio/{name}", "duration": plan["duration"],
            "conversations": [{"from": "human", "value": "<sound>\n" + q}, {"from": "gpt", "value": a}]}
           for task, q, a in talks]
    question, answer = ex["text_task"]
    text = {"input": [{"role": "user", "content": question}], "output": answer}
    refl = None
    if ex["flaw"]:
        fl = ex["flaw"]
        sf.write(str(out / "flawed" / name), fl["audio"], LM_SR, subtype=SUBTYPE)
        refl = {"id": ex["id"], "location": f"flawed/{name}", "reference": f"audio/{name}",
                "duration": plan["duration"], "sample_rate": LM_SR, "caption": ex["caption"],
                "rich_caption": ex["rich_caption"], "flaw": fl["kind"],
                "flawed_caption": world.short_caption(fl["plan"]), "critique": fl["critique"],
                "layout": fl["plan"]["layout"], "events": fl["plan"]["events"]}
    return gen, und, text, refl


def write_dataset(out, n, seed=0, workers=1):
    """Synthesise n clips into folder out and write the four manifests: ('toy_data', 100) -> Path('toy_data')."""
    out = Path(out)
    for sub in ("audio", "audio48k", "flawed"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, out) for i in range(n)]
    with Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else SerialPool() as pool:
        records = list(tqdm(pool.imap(_write_clip, jobs, chunksize=8), total=n, desc="clips"))
    with atomic_path(out / "generation.jsonl") as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(gen) + "\n" for gen, _, _, _ in records)
    with atomic_path(out / "understanding.json") as tmp, open(tmp, "w") as f:
        json.dump([item for _, und, _, _ in records for item in und], f, indent=1)
    with atomic_path(out / "text.jsonl") as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(text) + "\n" for _, _, text, _ in records)
    with atomic_path(out / "reflection.jsonl") as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(refl) + "\n" for _, _, _, refl in records if refl)
    return out


class SerialPool:
    """Stands in for a Pool when workers=1 (easier to debug, no process start-up)."""
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, jobs, chunksize):
        return map(fn, jobs)


# ----------------------------------------------------------------------------- readers
def _read_lines(path, required):
    """JSONL -> list of dicts, each checked for the required keys."""
    rows = []
    with open(path) as f:
        for k, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                missing = [key for key in required if key not in row]
                if missing:
                    raise ValueError(f"{path}:{k}: missing keys {missing}; each line needs {list(required)}.")
                rows.append(row)
    return rows


def _absolute(path, location):
    """A manifest location made absolute: ('toy_data/generation.jsonl', 'audio/a.wav') -> '/.../toy_data/audio/a.wav'."""
    return str((Path(path).resolve().parent / location).resolve())


def read_generation(path):
    """generation.jsonl -> [{'location' (absolute), 'caption', 'duration', 'sample_rate', ...}]."""
    rows = _read_lines(path, ("location", "caption", "duration", "sample_rate"))
    for row in rows:
        row["location"] = _absolute(path, row["location"])
        if "master_location" in row:
            row["master_location"] = _absolute(path, row["master_location"])
    return rows


def read_understanding(path):
    """understanding.json -> [{'id', 'sound' (absolute), 'duration', 'conversations': [{'from', 'value'}, ...]}]."""
    with open(path) as f:
        items = json.load(f)
    for k, item in enumerate(items):
        missing = [key for key in ("id", "sound", "conversations") if key not in item]
        if missing:
            raise ValueError(f"{path}: item {k} misses keys {missing}; each item needs id, sound, conversations.")
        item["sound"] = _absolute(path, item["sound"])
    return items


def read_text(path):
    """text.jsonl -> [{'input': [{'role': 'user', 'content': ...}], 'output': ...}]."""
    return _read_lines(path, ("input", "output"))


def read_reflection(path):
    """reflection.jsonl -> [{'location' (flawed, absolute), 'reference' (absolute), 'critique', ...}]."""
    rows = _read_lines(path, ("location", "reference", "caption", "flawed_caption", "flaw", "critique"))
    for row in rows:
        row["location"], row["reference"] = _absolute(path, row["location"]), _absolute(path, row["reference"])
    return rows


def main():
    p = argparse.ArgumentParser(description="Write the toy world as UALM-format manifests and wavs.")
    p.add_argument("--out", default="toy_data", help="output folder")
    p.add_argument("--n", type=int, default=1000, help="number of clips")
    p.add_argument("--seed", type=int, default=0, help="world seed; clip i depends only on (seed, i)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes that synthesise clips")
    args = p.parse_args()
    out = write_dataset(args.out, args.n, args.seed, args.workers)
    print(f"wrote {args.n} clips to {out}")


if __name__ == "__main__":
    main()
