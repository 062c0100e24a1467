"""
A tool, not a part of the model: the toy world's version of the paper's evaluation (its
generation, understanding and text benchmarks; SPEC.md section 9) for a trained UALM, on
held-out clips (the last --n_eval of the manifest, as train.py holds them out).

    python eval.py --ckpt runs/sft.pt
    python eval.py --replicate          # the paper's comparisons on runs/: -> runs/replication.md

- adherence: generate audio for held-out captions (CFG), decode it, and let the world's
  analyzer check it against the caption's ground truth (events, order/overlap, counts,
  pitch); also the CLAP score of each clip with its caption, the Frechet distance (FD)
  between CLAP audio embeddings of the generated and the real clips, and the KL
  divergence between the event distributions CLAP's frame tagger finds in the real clip
  and in the one generated for its caption (the paper's FD and KL, with our CLAP in
  place of PANNs / PaSST); and the same by asked layout (one event, two together, two or
  three in sequence), beside where the clips end against the world's lengths;
- understanding: answer accuracy (exact match) on held-out questions about real clips,
  and keyword accuracy of captions (every true event named, none invented);
- text: exact-match accuracy on held-out arithmetic problems;
- why (--replicate): each step of a round of self-reflection checked against the world
  (the plan, the audio, the critique's verdict and what it says it heard, the audio written
  again), and whether DPO's CLAP-ranked pairs differ in adherence. --replicate also trains
  the understanding-only model (train.py --stage und) and DPO on analyzer-ranked pairs
  (train.py --stage dpo --dpo_reward analyzer) when the folder lacks them.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from tqdm import tqdm

import reason
import tasks
from checkpoint import load_ckpt
from clap import K, pad_ids
from codec import FRAME_RATE
from data import load_audio, read_generation, read_text, read_understanding
from dpo import REWARDS, dpo_files, load_pairs
from model import AUDIO, TEXT
from parts import run_parts
from sequences import build, frame_nll
from sample import (MAX_SECONDS, audible, clap_order, decode_text, generate_audio, generate_text, listen, load_runtime,
                    prefix)
from utils import atomic_path, fail
from toy.analyzer import adherence, analyze
from toy.world import KEYWORDS, LAYOUTS, MAX_DURATION


def named_keywords(text):
    """The world's keywords a caption names: 'a bell, then two drum hits' -> {'bell', 'drum'}."""
    t = text.lower()
    return {k for k in KEYWORDS if k in t}


def frechet_distance(a, b):
    """FD between Gaussians fitted to two sets of embeddings (N, d):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of the root is the sum of
    the roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which has the same spectrum and
    is symmetric. e.g. 1-D: (m_a - m_b)^2 + (s_a - s_b)^2."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ sb @ root_a).clip(min=0)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


def event_distribution(rt, wav):
    """CLAP's frame tagger -> which events a clip holds, as a distribution over the world's
    keywords: the mean over frames of each 'active' tag's probability, normalised."""
    feats, _ = rt.clap.hear([wav])
    p = torch.sigmoid(rt.clap.tagger(feats[0]))[:, :K].mean(0) + 1e-6
    return (p / p.sum()).double()


def kl(p, q):
    """KL(p || q) of two distributions: ([0.5, 0.5], [0.9, 0.1]) -> 0.511."""
    return float((p * (p / q).log()).sum())


REFLECT_ROUNDS = 2  # make_audio's "reflect": at most this many critiques
BEST_OF = 4  # clips drawn per prompt where the evaluation keeps CLAP's best (method "best")


def make_audio(rt, prompt, method, cfg_scale, max_seconds, generator, seed):
    """One clip for a prompt -> codes (8, T) (T may be 0). direct: the text-to-audio template;
    best: the same, BEST_OF clips drawn and the one CLAP scores highest kept (sample.py
    --best_of); enrich: reason.enrich (rich caption, then audio); reflect: reason.reflect with
    REFLECT_ROUNDS rounds, its last audio."""
    if method in ("direct", "best"):
        n = BEST_OF if method == "best" else 1
        x, _ = prefix([{"role": "user", "text": tasks.TTA_PROMPT + prompt}], rt.tok, rt.model.cfg, AUDIO)
        clips = generate_audio(rt.model, x, n=n, cfg_scale=cfg_scale, max_frames=int(max_seconds * FRAME_RATE),
                               generator=generator)
        return clips[clap_order(rt, prompt, clips)[0]] if n > 1 else clips[0]
    with tempfile.TemporaryDirectory() as d:
        s = reason.Settings(out=d, cfg=cfg_scale, max_seconds=max_seconds, vae=False, seed=seed, echo=False)
        try:
            steps = (reason.enrich(rt, prompt, s) if method == "enrich"
                     else reason.reflect(rt, prompt, REFLECT_ROUNDS, s))
        except ValueError:  # an audio segment ended before its first frame, or too short to hear
            return torch.zeros(8, 0, dtype=torch.long)
    return [st for st in steps if st["kind"] == "audio" and st["role"] == "assistant"][-1]["codes"]


def length_range(layout):
    """The lengths the world gives a layout, in seconds: 'sequence' -> (3.0, 5.0)."""
    return LAYOUTS[layout][1], MAX_DURATION


def in_range(layout, seconds):
    """Is a generated length (a whole number of frames) inside length_range(layout), give or
    take half a frame? ('sequence', 2.9) -> False; seconds may be an array."""
    lo, hi = length_range(layout)
    half = 0.5 / FRAME_RATE
    return (seconds >= lo - half) & (seconds <= hi + half)


@torch.no_grad()
def eval_generation(rt, rows, cfg_scale, seed, method="direct", prompt_key="caption"):
    """Generate for each held-out row's prompt (its caption, or its vague prompt) and score
    the clip against the row's ground truth: adherence (and its parts), order (the layout
    of the two-event sequences alone), length_ok (the clip's length inside the world's range
    for the asked layout, length_range), CLAP (with the caption), FD, KL; and clips, one
    (layout, seconds generated, adherence, events right) per row for layout_table."""
    g = torch.Generator().manual_seed(seed)
    scores, seconds, claps, made, real, kls = [], [], [], [], [], []
    for i, r in enumerate(tqdm(rows, desc=f"generation ({method}, cfg {cfg_scale:g})")):
        # every clip may run to sample.py's MAX_SECONDS, whatever the held-out clip's duration, so where
        # it ends is the model's own decision (a cap from the ground truth would hide a clip that runs on)
        codes = make_audio(rt, r[prompt_key], method, cfg_scale, MAX_SECONDS, g, seed + i)
        seconds.append(codes.shape[1] / FRAME_RATE)
        if not audible(codes):  # nothing, or too short to hear: a failed clip
            scores.append({"events": 0.0, "layout": 0.0, "counts": 0.0, "pitch": 0.0, "score": 0.0})
            continue
        wav = rt.codec.decode(codes[None].long())[0]
        scores.append(adherence(analyze(wav.numpy()), r["events"]))
        claps.append(float(rt.clap.score([wav], pad_ids([rt.tok.encode(r["caption"])], rt.tok.vocab_size))[0]))
        ref = torch.from_numpy(load_audio(r["location"], sr=16000, mono=True))
        for w, out in ((wav, made), (ref, real)):
            feats, n_frames = rt.clap.hear([w])
            out.append(rt.clap.audio_embed(feats, n_frames)[0].numpy())
        kls.append(kl(event_distribution(rt, ref), event_distribution(rt, wav)))
    out = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    order = [s["layout"] for s, r in zip(scores, rows) if r["layout"] == "sequence"]
    out["order"] = float(np.mean(order)) if order else float("nan")
    out["length_ok"] = float(np.mean([in_range(r["layout"], sec) for r, sec in zip(rows, seconds)]))
    out["clap"] = float(np.mean(claps)) if claps else 0.0
    out["fd"] = frechet_distance(made, real) if len(made) > 1 else float("nan")
    out["kl"] = float(np.mean(kls)) if kls else float("nan")
    out["clips"] = [(r["layout"], sec, sc["score"], float(sc["events"])) for r, sec, sc in zip(rows, seconds, scores)]
    return out


def layout_table(clips):
    """[(layout, seconds generated, adherence, events right), ...] -> markdown rows: per asked
    layout, the world's range of lengths, the generated lengths' 10th, 50th and 90th
    percentiles and share inside the range, and the clips' mean adherence and events right,
    so a weakness of one layout (the second of two events, say) shows where a mean hides it."""
    out = ["| asked layout | clips | world's range (s) | generated: 10% / 50% / 90% (s) | inside the range "
           "| adherence | events right |", "|---|---|---|---|---|---|---|"]
    for layout in LAYOUTS:
        mine = np.array([c[1:] for c in clips if c[0] == layout], dtype=float).reshape(-1, 3)
        if len(mine):
            (lo, hi), sec = length_range(layout), mine[:, 0]
            p10, p50, p90 = np.percentile(sec, [10, 50, 90])
            out.append(f"| {layout} | {len(sec)} | {lo:.1f}-{hi:.1f} | {p10:.1f} / {p50:.1f} / {p90:.1f} "
                       f"| {pct(np.mean(in_range(layout, sec)))} | {pct(mine[:, 1].mean())} | {pct(mine[:, 2].mean())} |")
    return out


# The world's question templates (world.py), by what they ask: the first key whose words a
# question holds, e.g. "Is there a bell?" -> presence.
QUESTION_KINDS = {"events in order": "Which sounds", "presence": "Is there", "ticks per second": "ticks per second",
                  "count": "How many", "pitch": "low or high", "direction": "rising or falling",
                  "loudness": "loud or quiet", "overlap": "at the same time", "order": "Which comes first"}


def question_kind(question):
    return next((k for k, words in QUESTION_KINDS.items() if words in question), "other")


def ask(rt, question, feats, max_tokens=80):
    """A question, then the clip's frames, as eval asks it: -> the greedy answer."""
    x, f = prefix([{"role": "user", "text": question}, {"role": "user", "feats": feats}], rt.tok, rt.model.cfg, TEXT)
    return decode_text(rt.tok, generate_text(rt.model, x, f, max_tokens=max_tokens)).strip()


@torch.no_grad()
def eval_understanding(rt, items):
    qa, kw, kinds = [], [], {}
    for it in tqdm(items, desc="understanding"):
        question = it["conversations"][0]["value"].replace("<sound>", "").strip()
        truth = it["conversations"][1]["value"]
        answer = ask(rt, question, listen(rt, it["sound"]))
        if it["id"].endswith("_caption"):
            kw.append(named_keywords(answer) == named_keywords(truth))
        elif "_qa" in it["id"]:
            qa.append(answer.lower() == truth.lower())
            kinds.setdefault(question_kind(question), []).append(qa[-1])
    return {"answer_accuracy": float(np.mean(qa)) if qa else 0.0, "keyword_accuracy": float(np.mean(kw)) if kw else 0.0,
            "n_questions": len(qa), "n_captions": len(kw),
            "by_kind": {k: (sum(v), len(v)) for k, v in kinds.items()}}  # kind -> (right, asked)


@torch.no_grad()
def eval_binding(rt, rows):
    """Does the model read the sound a question names? For each clip whose events differ in
    loudness, ask 'Is the X loud or quiet?' of every event: -> (clips where every answer was
    the same, clips asked, right answers, questions). A model that answers from the clip as a
    whole gives one answer per clip."""
    same = right = asked = 0
    clips = [r for r in rows if len({e["loudness"] for e in r["events"]}) > 1]
    for r in tqdm(clips, desc="binding"):
        feats, answers = listen(rt, r["location"]), []
        for e in r["events"]:
            answers.append(ask(rt, f"Is the {e['keyword']} loud or quiet?", feats, max_tokens=5))
            right += answers[-1] == e["loudness"]
        same, asked = same + (len(set(answers)) == 1), asked + len(answers)
    return same, len(clips), right, asked


@torch.no_grad()
def clip_codes(rt, rows):
    """The codec's codes of each row's clip: {"codes": {location: (8, T)}}, as tasks.py reads them."""
    return {"codes": {r["location"]: rt.codec.encode(torch.from_numpy(load_audio(
        r["location"], sr=16000, mono=True)).to(rt.device)[None])[0].cpu() for r in rows}}


@torch.no_grad()
def caption_gap(rt, rows, A=None, shift=7, onset=10):
    """Teacher-forced cross-entropy (nats per frame) of each clip's codec tokens after its
    own caption and after the caption of the row `shift` further on: -> {"own", "other",
    "gap", "onset_gap"}, onset_gap over the first `onset` audio rows only, where the model
    has heard nothing of the clip yet and only the caption can say what comes. A: the
    clips' codes (clip_codes), computed here if not given."""
    A = A or clip_codes(rt, rows)
    own, other = [], []
    for i, r in enumerate(tqdm(rows, desc="caption gap")):
        for caption, out in ((r["caption"], own), (rows[(i + shift) % len(rows)]["caption"], other)):
            out.append(frame_nll(rt.model, build(tasks.tta(dict(r, caption=caption), A), rt.tok.encode,
                                                 rt.model.cfg)).cpu())
    mean = lambda xs, n=None: float(torch.cat([x[:n] for x in xs]).mean())
    return {"own": mean(own), "other": mean(other), "gap": mean(other) - mean(own),
            "onset_gap": mean(other, onset) - mean(own, onset)}


def judge(rt, codes, events):
    """Codes (8, T) -> (what the analyzer hears in their audio, its adherence to the events)."""
    found = analyze(rt.codec.decode(codes[None].long())[0].numpy())
    return found, adherence(found, events)


@torch.no_grad()
def why_reflection(rt, rows, seeds):
    """Why self-reflection helps or not: one round of reason.reflect per caption and seed,
    each step checked against the world -> counts over the chains: the plan (the rich caption)
    names the caption's events; the first audio holds them (the analyzer); the critique says
    "Problem: none."; its verdict is the analyzer's; the sounds it says it heard are the ones
    the analyzer hears; and the adherence of the first audio and of the one regenerated."""
    n = plan_right = first_right = says_none = verdict = heard = 0
    first, second = [], []
    for seed in seeds:
        for i, r in enumerate(tqdm(rows, desc=f"why reflection (seed {seed})")):
            truth = {e["keyword"] for e in r["events"]}
            with tempfile.TemporaryDirectory() as d:
                s = reason.Settings(out=d, cfg=3.0, max_seconds=MAX_SECONDS, vae=False, seed=seed + i, echo=False)
                try:
                    steps = reason.reflect(rt, r["caption"], 1, s)
                except ValueError:  # audio too short to hear: no critique to check
                    continue
            texts = [st["content"] for st in steps if st["kind"] == "text" and st["role"] == "assistant"]
            audio = [st["codes"] for st in steps if st["kind"] == "audio" and st["role"] == "assistant"]
            found, score = judge(rt, audio[0], r["events"])
            critique = texts[-1] if len(texts) > 1 else ""  # after the plan (and the heard caption)
            said = critique.split("Heard:")[1].split("Problem:")[0] if "Heard:" in critique else ""
            right, fine = score["events"] == 1.0, tasks.NO_PROBLEM in critique
            n, plan_right = n + 1, plan_right + (named_keywords(texts[0].split("\n")[0]) == truth)
            first_right, says_none, verdict = first_right + right, says_none + fine, verdict + (fine == right)
            heard += named_keywords(said) == {e["keyword"] for e in found}
            if len(audio) > 1:
                first.append(score["score"])
                second.append(judge(rt, audio[1], r["events"])[1]["score"] if audible(audio[1]) else 0.0)
    return {"chains": n, "plan_right": plan_right, "first_right": first_right, "says_none": says_none,
            "verdict": verdict, "heard": heard, "regenerated": len(first),
            "first": float(np.mean(first)) if first else float("nan"),
            "second": float(np.mean(second)) if second else float("nan"),
            "better": int(sum(b > a for a, b in zip(first, second))), "worse": int(sum(b < a for a, b in zip(first, second)))}


@torch.no_grad()
def why_dpo(rt, pairs, rows):
    """Does a DPO reward rank what adherence measures? The analyzer's adherence of each cached
    pair's winner and loser (dpo.py's runs/dpo_pairs.pt, or dpo_pairs_analyzer.pt, where it is
    so by construction), the ground truth found by the pair's caption in rows -> (winner
    higher, winner lower, tied)."""
    truth = {r["caption"]: r["events"] for r in rows}
    missing = [caption for caption, *_ in pairs if caption not in truth]
    if missing:
        raise ValueError(f"the DPO pairs' caption {missing[0]!r} is not in the manifest; evaluate with the --data "
                         "the pairs were made from")
    won = [[judge(rt, c, truth[caption])[1]["score"] for c in (w, l)] for caption, w, l, _ in tqdm(pairs, desc="why dpo")]
    return sum(a > b for a, b in won), sum(a < b for a, b in won), sum(a == b for a, b in won)


@torch.no_grad()
def eval_text(rt, items):
    right = []
    for it in tqdm(items, desc="text"):
        x, _ = prefix([{"role": "user", "text": it["input"][0]["content"]}], rt.tok, rt.model.cfg, TEXT)
        right.append(decode_text(rt.tok, generate_text(rt.model, x, max_tokens=20)).strip() == it["output"])
    return {"accuracy": float(np.mean(right))}


def pct(x):
    return f"{100 * x:.1f}%"


SHARES = ("score", "events", "layout", "counts", "pitch", "order", "length_ok")  # eval_generation's percentages


def over_seeds(rt, rows, cfg_scale, seeds, method="direct", prompt_key="caption"):
    """eval_generation once per seed -> {metric: cell}, each cell 'mean +- sample std' over the seeds."""
    runs = [eval_generation(rt, rows, cfg_scale, seed, method, prompt_key) for seed in seeds]
    cells = {"clips": [x for r in runs for x in r.pop("clips")]}
    for k in runs[0]:
        v = np.array([r[k] for r in runs])
        scale, fmt = (100, "{:.1f}") if k in SHARES else (1, "{:.3f}")
        cells[k] = fmt.format(scale * v.mean()) + (" +- " + fmt.format(scale * v.std(ddof=1)) if len(v) > 1 else "")
        cells[k] += "%" if scale == 100 else ""
    return cells


def replicate(args, gen, und, txt):
    """The paper's comparisons on the checkpoints in the folder of --ckpt (generation over
    --seeds seeds; understanding and text are greedy, one run) -> a markdown report, printed
    and written to that folder's replication.md."""
    runs = os.path.dirname(os.path.abspath(args.ckpt))

    def train_missing(name, why, *argv):
        """Train a checkpoint the comparison needs and the run lacks: python train.py ARGV."""
        if os.path.isfile(os.path.join(runs, name)):
            return
        print(f"{why} first: python train.py {' '.join(argv)}")
        subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"), *argv,
                        "--out", runs, "--data", args.data, "--n_eval", str(args.n_eval), "--seed", str(args.seed)],
                       check=True)  # train.py prints its own errors; eval then stops
    parts = run_parts(load_ckpt(args.ckpt, "UALM", "python train.py --stage all"), args.ckpt)  # the run's
    train_missing("und.pt", "the understanding-only model", "--stage", "und",
                  *[x for flag, folder in parts.items() if folder for x in (f"--{flag}", folder)])
    train_missing(dpo_files("analyzer")[1], "DPO on analyzer-ranked pairs", "--stage", "dpo", "--dpo_reward", "analyzer")
    rts = {}

    def rt(name):
        if name not in rts:
            rts[name] = load_runtime(os.path.join(runs, f"{name}.pt"), need_vae=False, need_clap=True)
        return rts[name]
    rows = gen[:args.n_gen]
    seeds = list(range(args.seed, args.seed + args.seeds))
    out = [f"Held-out clips of `{args.data}`; {len(rows)} captions, {len(und[:args.n_questions])} understanding "
           f"items, {len(txt)} arithmetic problems. Generation cells: mean +- standard deviation over "
           f"{len(seeds)} sampling seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}); "
           "understanding and text are greedy, one run.", "",
           "| model | checkpoint | CFG | adherence | events | layout | counts | pitch | order (A, then B) "
           "| length in range | CLAP | FD | KL |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    gen_clips = None
    for label, name, cfg, method in [
            ("UALM-Gen (text-to-audio only)", "gen", 3.0, "direct"),
            (f"UALM-Gen, best of {BEST_OF} by CLAP", "gen", 3.0, "best"),
            ("UALM (unified)", "pretrain", 1.0, "direct"), ("UALM (unified)", "pretrain", 3.0, "direct"),
            ("UALM-Reason (after SFT)", "sft", 3.0, "direct"), ("UALM-Reason + DPO", "dpo", 3.0, "direct"),
            ("UALM-Reason + DPO, analyzer-ranked pairs", "dpo_analyzer", 3.0, "direct")]:
        g = over_seeds(rt(name), rows, cfg, seeds, method)
        out.append(f"| {label} | {name}.pt | {cfg:g} | {g['score']} | {g['events']} | {g['layout']} "
                   f"| {g['counts']} | {g['pitch']} | {g['order']} | {g['length_ok']} | {g['clap']} | {g['fd']} "
                   f"| {g['kl']} |")
        print(out[-1])
        gen_clips = gen_clips or g["clips"]
    out += ["", "The clips of gen.pt by asked layout: where they end, against the lengths the world gives "
            "the layout, and how well they follow the caption:", ""]
    out += layout_table(gen_clips)
    print("\n".join(out[-len(LAYOUTS) - 2:]))
    out += ["", f"Does the LM read its caption? Teacher-forced cross-entropy of the {len(gen)} held-out clips' codec "
            "tokens after their own caption and after another clip's (nats per frame; onset: the first 10 rows).", "",
            "| checkpoint | own caption | another's | gap | gap at onset |", "|---|---|---|---|---|"]
    codes = clip_codes(rt("gen"), gen)  # every checkpoint of the folder shares its codec
    for name in ("gen", "pretrain", "sft", "dpo"):
        c = caption_gap(rt(name), gen, codes)
        out.append(f"| {name}.pt | {c['own']:.3f} | {c['other']:.3f} | {c['gap']:.3f} | {c['onset_gap']:.3f} |")
        print(out[-1])
    out += ["", "| model | checkpoint | answers | caption keywords | arithmetic |", "|---|---|---|---|---|"]
    for label, name in [("understanding only", "und"), ("UALM (unified)", "pretrain"),
                        ("UALM-Reason (after SFT)", "sft"), ("UALM-Reason + DPO", "dpo")]:
        u = eval_understanding(rt(name), und[:args.n_questions])
        t = pct(eval_text(rt(name), txt)["accuracy"]) if name != "und" else "(no text training)"
        out.append(f"| {label} | {name}.pt | {pct(u['answer_accuracy'])} | {pct(u['keyword_accuracy'])} | {t} |")
        print(out[-1])
    out += ["", "| prompt | how (sft.pt, CFG 3) | adherence | events | layout | counts | pitch | CLAP |",
            "|---|---|---|---|---|---|---|---|"]
    for prompt_key, method in [("vague_prompt", "direct"), ("vague_prompt", "enrich"), ("caption", "direct"),
                               ("caption", "best"), ("caption", "reflect")]:
        g = over_seeds(rt("sft"), rows, 3.0, seeds, method, prompt_key)
        how = {"reflect": f"reflect, up to {REFLECT_ROUNDS} rounds", "best": f"best of {BEST_OF} by CLAP"}
        how = how.get(method, method)
        out.append(f"| {prompt_key.replace('_', ' ')} | {how} | {g['score']} | {g['events']} "
                   f"| {g['layout']} | {g['counts']} | {g['pitch']} | {g['clap']} |")
        print(out[-1])
    w = why_reflection(rt("sft"), rows, seeds)
    n = w["chains"]
    out += ["", f"Why: each step of one round of self-reflection checked against the world (sft.pt, CFG 3; the "
            f"{len(rows)} captions, seeds {', '.join(map(str, seeds))}: {n} chains), and DPO's pairs by the analyzer.", "",
            "| check | result |", "|---|---|",
            f"| the plan (rich caption) names exactly the caption's events | {w['plan_right']} of {n} |",
            f"| the first audio holds exactly those events (the analyzer) | {w['first_right']} of {n} |",
            f"| the critique says `{tasks.NO_PROBLEM}` | {w['says_none']} of {n} |",
            f"| its verdict is the analyzer's | {w['verdict']} of {n} |",
            f"| the sounds it says it heard are the ones the analyzer hears | {w['heard']} of {n} |",
            f"| regenerated after the critique named a problem: adherence of the first audio -> the second "
            f"| {pct(w['first'])} -> {pct(w['second'])} ({w['regenerated']} chains; better in {w['better']}, "
            f"worse in {w['worse']}) |"]
    for reward in REWARDS:
        name = dpo_files(reward)[0]
        if os.path.isfile(os.path.join(runs, name)):
            pairs = load_pairs(os.path.join(runs, name))
            hi, lo, tie = why_dpo(rt("sft"), pairs, read_generation(os.path.join(args.data, "generation.jsonl")))
            out.append(f"| DPO's pairs ({name}, ranked by {reward}): the winner's adherence above / below / equal "
                       f"to the loser's | {hi} / {lo} / {tie} of {len(pairs)} |")
    with atomic_path(os.path.join(runs, "replication.md")) as tmp, open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    print(f"-> {os.path.join(runs, 'replication.md')}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="runs/sft.pt", help="with --replicate: any checkpoint of the runs folder")
    p.add_argument("--replicate", action="store_true",
                   help="the paper's comparisons on every checkpoint of the folder (trains the understanding-only "
                        "model first if it is missing) -> replication.md there")
    p.add_argument("--data", default="toy_data", help="folder of the manifests (python data.py --out DIR)")
    p.add_argument("--n_eval", type=int, default=50, help="held-out clips: the last n of the manifest (as train.py)")
    p.add_argument("--n_gen", type=int, default=20, help="held-out captions to generate")
    p.add_argument("--n_questions", type=int, default=200, help="held-out understanding items to ask")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale of audio generation")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --replicate: the first of --seeds)")
    p.add_argument("--seeds", type=int, default=3, help="with --replicate: sampling seeds per generation cell, "
                   "from --seed on")
    args = p.parse_args()
    if args.seeds < 1:
        fail(f"--seeds {args.seeds}: give 1 or more")
    for name in ("generation.jsonl", "understanding.json", "text.jsonl"):
        if not os.path.isfile(os.path.join(args.data, name)):
            fail(f"{os.path.join(args.data, name)}: not found; make the world with `python data.py --out "
                 f"{args.data} --n 2000`, or pass --data")
    try:
        gen = read_generation(os.path.join(args.data, "generation.jsonl"))[-args.n_eval:]
        held = {r["location"] for r in gen}
        und = [i for i in read_understanding(os.path.join(args.data, "understanding.json")) if i["sound"] in held]
        txt = read_text(os.path.join(args.data, "text.jsonl"))[-args.n_eval:]
        if args.replicate:
            torch.manual_seed(args.seed)
            return replicate(args, gen, und, txt)
        rt = load_runtime(args.ckpt, need_vae=False, need_clap=True)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    except subprocess.CalledProcessError:
        fail("training the understanding-only model failed (its error is above); fix that, then rerun")
    torch.manual_seed(args.seed)
    print(f"{args.ckpt} on held-out clips of {args.data}")
    g = eval_generation(rt, gen[:args.n_gen], args.cfg, args.seed)
    print(f"generation (cfg {args.cfg}, {args.n_gen} captions): adherence score {100 * g['score']:.1f}% (events "
          f"{100 * g['events']:.1f}%, layout {100 * g['layout']:.1f}%, counts {100 * g['counts']:.1f}%, pitch "
          f"{100 * g['pitch']:.1f}%; A-then-B order {100 * g['order']:.1f}%, length in the layout's range "
          f"{100 * g['length_ok']:.1f}%), CLAP {g['clap']:.3f}, FD {g['fd']:.3f}, KL {g['kl']:.3f}")
    print("\n".join(layout_table(g["clips"])))
    c = caption_gap(rt, gen)
    print(f"caption gap ({len(gen)} clips, teacher-forced): {c['own']:.3f} nats per frame after the clip's own caption, "
          f"{c['other']:.3f} after another's (gap {c['gap']:.3f}; {c['onset_gap']:.3f} over the first 10 rows)")
    u = eval_understanding(rt, und[:args.n_questions])
    print(f"understanding: answer accuracy {100 * u['answer_accuracy']:.1f}% ({u['n_questions']} questions), "
          f"caption keyword accuracy {100 * u['keyword_accuracy']:.1f}% ({u['n_captions']} captions)")
    print("  answers by kind of question: " + ", ".join(f"{k} {r}/{n}" for k, (r, n) in u["by_kind"].items()))
    same, clips, right, asked = eval_binding(rt, gen)
    print(f"  'Is the X loud or quiet?' of every event of the {clips} clips whose events differ in loudness: "
          f"one answer for all of a clip's events in {same} of {clips}, right {right}/{asked}")
    t = eval_text(rt, txt)
    print(f"text: arithmetic accuracy {100 * t['accuracy']:.1f}% ({len(txt)} problems)")


if __name__ == "__main__":
    sys.exit(main())
