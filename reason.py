"""
UALM-Reason at inference (paper; SPEC.md section 8): a multimodal chain of thought, text and
audio steps in one conversation.

    python reason.py --mode enrich --prompt "an alarm"
    python reason.py --mode dialogue --prompt "a rhythm" --answers "drum|three loud drum hits"
    python reason.py --mode reflect --prompt "A high bell, then three drum hits." --rounds 3

Each mode replays the conversation the model saw in training (tasks.py) and lets the
model write the assistant's parts, one segment at a time: sample.prefix builds the
conversation so far in the training template, then the model writes text greedily up to
<|eot|>/<|eos|>, or audio with classifier-free guidance.

    enrich    user: vague prompt -> rich caption (Keywords / Layout / Description) -> audio
    dialogue  user: "Ask me about it first. <vague prompt>" -> the model asks (an answer from --answers or the
              terminal after each question) until it writes the rich caption -> audio
    reflect   user: "Generate audio for this caption. <caption>" -> the plan (a rich
              caption) -> audio -> the model hears it (codec decode, then the frozen
              encoder, as it hears any audio) -> critique "Plan: .. Heard: .. Problem: .."
              -> when it names a problem, a corrected audio, which the next round hears
              in place of the first. It stops at "Problem: none." or after --rounds.

Training has one critique per conversation, so every round replays that template with the
latest audio as the first attempt. Every step is printed as it comes; audio steps are
written to --out/stepN.wav (48 kHz stereo through the VAE unless --no_vae).
"""

import argparse
import os
from dataclasses import dataclass

import torch

import tasks
from codec import FRAME_RATE
from model import AUDIO, N_STREAMS, TEXT
from sample import audible, decode_text, generate_audio, generate_text, listen, load_runtime, prefix, to_wave, write_audio
from utils import fail

MODES = ("enrich", "dialogue", "reflect")
ANSWER_SEP = "|"  # not ';': the toy world's detail answers contain it ('a low bell; two drum hits')
MAX_QUESTIONS = 5  # questions before the caption is forced: room above the 3 the training dialogues ask at most
CAPTION_START = "Keywords:"  # a rich caption, not a question


@dataclass
class Settings:
    out: str = "reason_out"
    cfg: float = 3.0
    temperature: float = 0.8
    top_k: int = 20
    max_seconds: float = 10.0
    max_text_tokens: int = 200
    vae: bool = True
    seed: int = 0
    echo: bool = True  # print each step as it comes


class Chain:
    """The steps of one chain of thought and the model calls that write them. A step is
    {"kind": "text", "role", "content"} or {"kind": "audio", "role", "path", "seconds", "codes"}."""

    def __init__(self, rt, s):
        self.rt, self.s, self.steps = rt, s, []
        self.generator = torch.Generator(device=rt.device).manual_seed(s.seed)
        os.makedirs(s.out, exist_ok=True)

    def add(self, step):
        self.steps.append(step)
        if self.s.echo:
            n, who = len(self.steps), step["role"]
            if step["kind"] == "text":
                print(f"[{n}] {who}: " + step["content"].replace("\n", "\n" + " " * (len(str(n)) + len(who) + 5)))
            else:
                verb = "writes audio" if who == "assistant" else "hears"
                print(f"[{n}] {who} {verb}: {step['path']} ({step['seconds']:.2f} s)")

    def said(self, text):
        """The user's words, as they enter the conversation."""
        self.add({"kind": "text", "role": "user", "content": text})
        return {"role": "user", "text": text}

    def write_text(self, messages):
        """The model's next text segment (greedy) -> its message."""
        rows, feats = self._prefix(messages, TEXT, self.s.max_text_tokens)
        text = decode_text(self.rt.tok, generate_text(self.rt.model, rows, feats, self.s.max_text_tokens)).strip()
        self.add({"kind": "text", "role": "assistant", "content": text})
        return {"role": "assistant", "text": text}

    def write_audio(self, messages):
        """The model's next audio segment (CFG sampling), written to out/stepN.wav -> its message."""
        max_frames = int(self.s.max_seconds * FRAME_RATE)
        rows, feats = self._prefix(messages, AUDIO, max_frames + N_STREAMS)
        codes = generate_audio(self.rt.model, rows, feats, cfg_scale=self.s.cfg, temperature=self.s.temperature,
                               top_k=self.s.top_k, max_frames=max_frames, generator=self.generator,
                               progress=self.s.echo)[0]
        if codes.shape[1] == 0:
            raise ValueError("the model ended its audio before the first frame; try another --seed")
        path = os.path.join(self.s.out, f"step{len(self.steps) + 1}.wav")
        seconds = write_audio(self.rt, codes, path, vae=self.s.vae)
        self.add({"kind": "audio", "role": "assistant", "path": path, "seconds": seconds, "codes": codes})
        return {"role": "assistant", "codes": codes}

    def hear(self):
        """The model listens to its latest audio: codec decode to 16 kHz, then the encoder -> a user message."""
        step = [st for st in self.steps if st["kind"] == "audio" and st["role"] == "assistant"][-1]
        if not audible(step["codes"]):
            raise ValueError(f"the model's audio is {step['codes'].shape[1]} frame(s) long, too short to hear; "
                             "try another --seed")
        wav, _ = to_wave(self.rt, step["codes"], vae=False)
        self.add({"kind": "audio", "role": "user", "path": step["path"], "seconds": step["seconds"]})
        return {"role": "user", "feats": listen(self.rt, wav)}

    def _prefix(self, messages, modality, room):
        rows, feats = prefix(messages, self.rt.tok, self.rt.model.cfg, modality)
        limit = self.rt.model.lm.cfg.max_position_embeddings
        if rows.shape[0] + room > limit:
            raise ValueError(f"the conversation is {rows.shape[0]} tokens, too long for the context of {limit}; "
                             "shorten the prompt or lower --max_seconds")
        return rows, feats


def enrich(rt, prompt, s=Settings()):
    """Vague prompt -> rich caption -> audio (tasks.enrich) -> the list of steps."""
    c = Chain(rt, s)
    msgs = [c.said(prompt)]
    msgs.append(c.write_text(msgs))
    c.write_audio(msgs)
    return c.steps


def dialogue(rt, prompt, reply, s=Settings()):
    """Vague prompt -> questions, each answered by reply(question) -> rich caption -> audio
    (tasks.dialogue) -> the list of steps. e.g. reply = dict(tasks.dialogue_turns(row)).get."""
    c = Chain(rt, s)
    msgs = [c.said(tasks.DIALOGUE_PROMPT + prompt)]
    for asked in range(MAX_QUESTIONS + 1):
        msgs.append(c.write_text(msgs))
        if msgs[-1]["text"].startswith(CAPTION_START) or asked == MAX_QUESTIONS:
            break  # the rich caption (or the last text the question limit allows)
        msgs.append(c.said(reply(msgs[-1]["text"])))
    c.write_audio(msgs)
    return c.steps


def reflect(rt, caption, rounds, s=Settings()):
    """Caption -> plan -> audio, then up to `rounds` times: hear it, critique it, and when the
    critique names a problem, a corrected audio (tasks.reflect) -> the list of steps."""
    if rounds < 1:
        raise ValueError(f"--rounds is {rounds}; give at least 1")
    c = Chain(rt, s)
    start = [c.said(tasks.TTA_PROMPT + caption)]
    start.append(c.write_text(start))  # the plan
    attempt = c.write_audio(start)
    for _ in range(rounds):
        msgs = start + [attempt, c.hear()]
        msgs.append(c.write_text(msgs))  # the critique
        if tasks.NO_PROBLEM in msgs[-1]["text"]:
            break
        attempt = c.write_audio(msgs)
    return c.steps


def replies(scripted):
    """--answers 'drum|three loud drum hits' -> reply(question): the scripted answers in
    order, then the terminal."""
    left = [a.strip() for a in scripted.split(ANSWER_SEP)] if scripted else []

    def reply(question):
        if left:
            return left.pop(0)
        try:
            return input("your answer> ").strip()
        except EOFError:
            raise ValueError(f"the model asked more questions than --answers answers; add one (separate "
                             f"them with '{ANSWER_SEP}')") from None
    return reply


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--mode", default="enrich", help="one of " + ", ".join(MODES))
    p.add_argument("--prompt", default=None, help="a vague request (enrich, dialogue) or a caption (reflect)")
    p.add_argument("--answers", default=None,
                   help=f"dialogue: the user's replies in order, separated by '{ANSWER_SEP}' (then the terminal asks)")
    p.add_argument("--rounds", type=int, default=3, help="reflect: at most this many critiques")
    p.add_argument("--ckpt", default="runs/sft.pt", help="an LM checkpoint written by train.py")
    p.add_argument("--out", default="reason_out", help="folder for the audio steps")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=0.8, help="audio sampling temperature")
    p.add_argument("--top_k", type=int, default=20, help="audio: sample among the k likeliest codes")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same chain")
    p.add_argument("--max_seconds", type=float, default=10.0, help="the longest audio step")
    p.add_argument("--max_text_tokens", type=int, default=200, help="the longest text step")
    p.add_argument("--no_vae", action="store_true", help="write the codec's 16 kHz mono, not 48 kHz stereo")
    args = p.parse_args(argv)
    if args.mode not in MODES:
        fail(f"--mode {args.mode} is unknown; use one of {', '.join(MODES)}")
    if not args.prompt or not args.prompt.strip():
        fail("--prompt is empty; give a vague request (enrich, dialogue) or a caption (reflect)")
    if args.rounds < 1:
        fail(f"--rounds is {args.rounds}; give at least 1")
    try:
        rt = load_runtime(args.ckpt, need_vae=not args.no_vae)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    torch.manual_seed(args.seed)
    s = Settings(args.out, args.cfg, args.temperature, args.top_k, args.max_seconds, args.max_text_tokens,
                 not args.no_vae, args.seed)
    prompt = args.prompt.strip()
    try:
        if args.mode == "enrich":
            enrich(rt, prompt, s)
        elif args.mode == "dialogue":
            dialogue(rt, prompt, replies(args.answers), s)
        else:
            reflect(rt, prompt, args.rounds, s)
    except ValueError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
