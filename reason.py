"""
UALM-Reason at inference (paper; SPEC.md section 8): a multimodal chain of thought, text and
audio segments in one conversation, whose flow the model decides.

    python reason.py --mode enrich --prompt "an alarm"
    python reason.py --mode dialogue --prompt "a rhythm" --answers "drum|three loud drum hits"
    python reason.py --mode reflect --prompt "A high bell, then three drum hits." --rounds 3

The program plays the user and the world, the model the assistant. An assistant turn is one
or more segments, and the model's own next token decides every step of it, as the release's
inference does (SPEC.md sections 1 and 6; Chain.turn):

    <|assistant|>   the argmax of <|text|> / <|audio|> picks the segment's modality
    the segment     text greedily, or audio with classifier-free guidance
    its END         <|eot|>: another segment of the same turn follows, back to <|assistant|>
                    <|eos|>: the turn is over, and the program speaks next
                    (text: the token the text stopped on; audio: the argmax of <|eot|> /
                    <|eos|> after its last delay row)

sample.prefix builds each prefix in the training template. The modes differ in what the
program says between the model's turns; tasks.py holds the training conversations the model
learned its flows from:

    enrich    user: vague prompt
              model (as trained): rich caption (Keywords / Layout / Description) <|eot|> audio <|eos|>
    dialogue  user: "Ask me about it first. <vague prompt>"
              model: a question <|eos|>, answered from --answers or the terminal, and again,
              until a turn holds audio: rich caption <|eot|> audio <|eos|>
    reflect   user: "Plan it, listen and fix it. <caption>"
              model: plan (a rich caption) <|eot|> audio <|eos|>
              then each round, the user turn is that audio heard (codec decode, then the
              frozen encoder, as it hears any audio) and the model writes the caption of what
              it heard <|eot|> the critique "Plan: .. Heard: .. Problem: .." and then either
              <|eos|> (nothing to fix: done) or <|eot|> a corrected audio <|eos|>, which the
              next round hears in place of the first; at most --rounds rounds.

Training has one critique per conversation, so every round replays that template with the
latest audio as the first attempt. Every step is printed as it comes, with the modality the
model chose and the END it wrote; audio steps are written to --out/stepN.wav (48 kHz stereo
through the VAE unless --no_vae).
"""

import argparse
import os
from dataclasses import dataclass

import torch

import tasks
from codec import FRAME_RATE
from model import AUDIO, EOS, EOT, N_STREAMS, TEXT
from sample import (MAX_SECONDS, TEMPERATURE, TOP_K, audible, choose_end, choose_modality, decode_text,
                    generate_audio, generate_text, listen, load_runtime, prefix, to_wave, write_audio)
from sequences import audio_rows
from utils import fail

MODES = ("enrich", "dialogue", "reflect")
ANSWER_SEP = "|"  # not ';': the toy world's detail answers contain it ('a low bell; two drum hits')
MAX_QUESTIONS = 5  # dialogue: turns without audio before the program gives up; the training dialogues ask 3 at most
MAX_SEGMENTS = 4  # segments of one turn before the program cuts it; the longest training turn has 3
END_NAMES = {EOT: "<|eot|>", EOS: "<|eos|>"}


@dataclass
class Settings:
    out: str = "reason_out"
    cfg: float = 3.0
    temperature: float = TEMPERATURE
    top_k: int = TOP_K
    max_seconds: float = MAX_SECONDS
    max_text_tokens: int = 200
    vae: bool = True
    seed: int = 0
    echo: bool = True  # print each step as it comes


class Chain:
    """The steps of one chain of thought and the model calls that write them. A step is
    {"kind": "text", "role", "content"} or {"kind": "audio", "role", "path", "seconds", "codes"};
    the assistant's steps also hold "end", the END the model wrote after them."""

    def __init__(self, rt, s):
        self.rt, self.s, self.steps = rt, s, []
        self.generator = torch.Generator(device=rt.device).manual_seed(s.seed)
        os.makedirs(s.out, exist_ok=True)

    def add(self, step):
        self.steps.append(step)
        if self.s.echo:
            n, who = len(self.steps), step["role"]
            if who == "assistant":
                who = f"assistant ({step['kind']}, then {END_NAMES[step['end']]})"
            if step["kind"] == "text":
                print(f"[{n}] {who}: " + step["content"].replace("\n", "\n" + " " * (len(str(n)) + len(who) + 5)))
            else:
                verb = "wrote" if step["role"] == "assistant" else "hears"
                print(f"[{n}] {who} {verb}: {step['path']} ({step['seconds']:.2f} s)")

    def said(self, text):
        """The user's words, as they enter the conversation."""
        self.add({"kind": "text", "role": "user", "content": text})
        return {"role": "user", "text": text}

    def turn(self, messages):
        """The assistant's turn after messages: at each <|assistant|> the model picks the
        modality, writes the segment and its END, until that END is <|eos|> -> the turn's messages."""
        new = []
        for _ in range(MAX_SEGMENTS):
            rows, feats = self._prefix(messages + new, None, 1)
            write = self.write_text if choose_modality(self.rt.model, rows, feats) == TEXT else self.write_audio
            message, end = write(messages + new)
            new.append(message)
            if end == EOS:
                return new
        raise ValueError(f"the model wrote {MAX_SEGMENTS} segments in one turn without ending it; try another "
                         "--seed or checkpoint")

    def write_text(self, messages):
        """The model's next text segment (greedy) -> (its message, its END)."""
        rows, feats = self._prefix(messages, TEXT, self.s.max_text_tokens)
        ids = generate_text(self.rt.model, rows, feats, self.s.max_text_tokens)
        end = ids[-1] if ids and ids[-1] in END_NAMES else None
        if end is None:  # max_text_tokens ran out first: the END the model would write there
            written = torch.zeros(len(ids), N_STREAMS, dtype=torch.long)
            written[:, 0] = torch.tensor(ids, dtype=torch.long)
            end = choose_end(self.rt.model, torch.cat([rows, written]), feats)
        text = decode_text(self.rt.tok, ids).strip()
        self.add({"kind": "text", "role": "assistant", "content": text, "end": end})
        return {"role": "assistant", "text": text}, end

    def write_audio(self, messages):
        """The model's next audio segment (CFG sampling), written to out/stepN.wav -> (its
        message, its END: read after the audio's last delay row, where training puts it)."""
        max_frames = int(self.s.max_seconds * FRAME_RATE)
        rows, feats = self._prefix(messages, AUDIO, max_frames + N_STREAMS)
        codes = generate_audio(self.rt.model, rows, feats, cfg_scale=self.s.cfg, temperature=self.s.temperature,
                               top_k=self.s.top_k, max_frames=max_frames, generator=self.generator,
                               progress=self.s.echo)[0]
        if codes.shape[1] == 0:
            raise ValueError("the model ended its audio before the first frame; try another --seed")
        end = choose_end(self.rt.model, torch.cat([rows, audio_rows(self.rt.model.cfg, codes)]), feats)
        path = os.path.join(self.s.out, f"step{len(self.steps) + 1}.wav")
        seconds = write_audio(self.rt, codes, path, vae=self.s.vae)
        self.add({"kind": "audio", "role": "assistant", "path": path, "seconds": seconds, "codes": codes, "end": end})
        return {"role": "assistant", "codes": codes}, end

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


def last_audio(turn):
    """The index of a turn's last audio; a turn that wrote none is an error: these modes are
    there to make a sound."""
    found = [i for i, m in enumerate(turn) if "codes" in m]
    if not found:
        raise ValueError("the model ended its turn without writing audio; try another --seed or checkpoint")
    return found[-1]


def enrich(rt, prompt, s=Settings()):
    """Vague prompt -> the model's turn (trained as: rich caption <|eot|> audio <|eos|>; see
    tasks.enrich) -> the list of steps."""
    c = Chain(rt, s)
    last_audio(c.turn([c.said(prompt)]))
    return c.steps


def dialogue(rt, prompt, reply, s=Settings()):
    """Vague prompt -> the model's turns, each turn without audio (a question) answered by
    reply(its text), until a turn holds audio (trained as: questions, then rich caption
    <|eot|> audio; see tasks.dialogue) -> the list of steps. e.g. reply = dict(tasks.dialogue_turns(row)).get."""
    c = Chain(rt, s)
    msgs = [c.said(tasks.DIALOGUE_PROMPT + prompt)]
    for asked in range(MAX_QUESTIONS + 1):
        turn = c.turn(msgs)
        msgs += turn
        if any("codes" in m for m in turn):
            return c.steps  # the sound is written: the dialogue is over
        if asked < MAX_QUESTIONS:
            msgs.append(c.said(reply(turn[-1]["text"])))
    raise ValueError(f"the model asked {MAX_QUESTIONS + 1} times without writing the audio; answer more "
                     "precisely or try another checkpoint")


def reflect(rt, caption, rounds, s=Settings()):
    """Caption -> plan and audio (the model's first turn), then up to `rounds` times: the
    program lets the model hear its latest audio, and the model's turn (trained as: heard
    caption <|eot|> critique, then <|eos|> or <|eot|> corrected audio; see tasks.reflect)
    either ends in text (nothing to fix: stop) or holds a new audio, heard next round -> the
    list of steps."""
    if rounds < 1:
        raise ValueError(f"--rounds is {rounds}; give at least 1")
    c = Chain(rt, s)
    start = [c.said(tasks.REFLECT_PROMPT + caption)]
    turn = c.turn(start)
    i = last_audio(turn)
    start, attempt = start + turn[:i], turn[i]  # the plan, then the audio each round replaces
    for _ in range(rounds):
        turn = c.turn(start + [attempt, c.hear()])
        if not any("codes" in m for m in turn):
            break  # its turn ended in text: the critique found nothing to fix
        attempt = turn[last_audio(turn)]
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
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="audio sampling temperature")
    p.add_argument("--top_k", type=int, default=TOP_K, help="audio: sample among the k likeliest codes")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same chain")
    p.add_argument("--max_seconds", type=float, default=MAX_SECONDS, help="the longest audio step")
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
