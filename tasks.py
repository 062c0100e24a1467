"""
Every task of the paper as a conversation in the release's template (SPEC.md sections 1 and
8; sequences.py turns it into a grid): generation, understanding, text and UALM-Reason's
enrichment, dialogue and self-reflection; and the data they are made of (the manifests of
--data split into training and held-out clips, and the tokenizer that reads them).

Audio the model writes is the clip's cached codec codes (8, T); audio it hears is the
clip's cached encoder frames (T25, d). `A` below is the cache: {"codes": {path: ...},
"feats": {path: ...}} keyed by the wav's path.

    tta          user: "Generate audio for this caption. <caption>"  -> assistant: audio
    understand   user: "<question>", user: heard audio                -> assistant: "<answer>",
                 then the clip's other questions, each a user turn and the assistant's answer
    text         user: "<problem>"                                    -> assistant: "<answer>"
    enrich       user: "<vague prompt>" -> assistant: "<rich caption>", assistant: audio
    dialogue     user: "Ask me about it first. <vague prompt>", then the model asks until
                 the caption is complete, then assistant: "<rich caption>", assistant: audio
                 (the instruction tells it from enrich, which begins the same way)
    reflect      user: "Plan it, listen and fix it. <caption>" -> assistant: plan (rich
                 caption), first audio (out of the loss when flawed), user: that audio heard,
                 assistant: the caption of what it heard, the critique, and, when the critique
                 found a problem, corrected audio (the instruction tells it from tta)
"""

import os

from data import read_generation, read_reflection, read_text, read_understanding
from parts import load_tokenizer, parts_of
from tokenizer import SPTokenizer

TTA_PROMPT = "Generate audio for this caption. "  # the release's text-to-audio instruction, before the caption
DIALOGUE_PROMPT = "Ask me about it first. "  # tells a dialogue from an enrichment, which starts the same way
REFLECT_PROMPT = "Plan it, listen and fix it. "  # tells self-reflection (plan first) from tta (audio at once)
# the dialogue's questions, one per part of a rich caption: Keywords, Layout, Description
ASK_SOUNDS = "Which sounds should it have?"
ASK_LAYOUT = "Should they play one after the other or at the same time?"
ASK_DETAILS = "Any details about each sound?"
NO_PROBLEM = "Problem: none."  # a critique that finds nothing to fix ends self-reflection with this

# -----------------------------------------------------------------------------
# Each task as a conversation


def tta(row, A):
    return [{"role": "user", "text": TTA_PROMPT + row["caption"]},
            {"role": "assistant", "codes": A["codes"][row["location"]]}]


def understand(items, A, order=None):
    """understanding.json items about one clip as one conversation: the clip is heard once,
    with the first question, and every other question follows as a turn of its own, so its
    frames are paid for once rather than once per question. `order` permutes the items (the
    first question varies, as held-out questions come alone). A human turn is
    '<sound>\\n<question>'; an item may hold several turns."""
    items = [items[i] for i in order] if order is not None else items
    out = []
    for it in items:
        for turn in it["conversations"]:
            if turn["from"] == "human":
                out.append({"role": "user", "text": turn["value"].replace("<sound>", "").strip()})
                if len(out) == 1:
                    out.append({"role": "user", "feats": A["feats"][it["sound"]]})
            else:
                out.append({"role": "assistant", "text": turn["value"]})
    return out


def text(item, A=None):
    return [{"role": "user", "text": item["input"][0]["content"]}, {"role": "assistant", "text": item["output"]}]


def enrich(row, A):
    return [{"role": "user", "text": row["vague_prompt"]},
            {"role": "assistant", "text": row["rich_caption"]},
            {"role": "assistant", "codes": A["codes"][row["location"]]}]


def dialogue_turns(row):
    """The questions the model asks and the user's answers, from the clip's ground truth.
    e.g. a bell then a drum -> [(ASK_SOUNDS, 'bell and drum'), (ASK_LAYOUT, 'one after the
    other'), (ASK_DETAILS, 'a low bell; two drum hits')]."""
    from toy import world
    events = row["events"]
    turns = [(ASK_SOUNDS, " and ".join(ev["keyword"] for ev in events))]
    if len(events) > 1:
        turns.append((ASK_LAYOUT, "at the same time" if row["layout"] == "together" else "one after the other"))
    turns.append((ASK_DETAILS, "; ".join(world.phrase(ev) for ev in events)))
    return turns


def dialogue(row, A):
    msgs = [{"role": "user", "text": DIALOGUE_PROMPT + row["vague_prompt"]}]
    for question, answer in dialogue_turns(row):
        msgs += [{"role": "assistant", "text": question}, {"role": "user", "text": answer}]
    return msgs + [{"role": "assistant", "text": row["rich_caption"]},
                   {"role": "assistant", "codes": A["codes"][row["location"]]}]


def reflect(item, A, flawed=True):
    """A reflection.jsonl item. The model hears its first audio, writes the caption of what
    it heard (the paper's re-captioning), then the critique of that against the plan.
    flawed=True: the first audio is the flawed clip (kept out of the loss: the model must
    not learn to make it), it is heard as the flawed caption, the critique names the flaw
    and ends with <|eot|>, and the clip is generated again. flawed=False: the first audio is
    right, heard as the caption, and the critique says so and ends the turn (<|eos|>)."""
    first = item["location"] if flawed else item["reference"]
    heard = item["flawed_caption"] if flawed else item["caption"]
    msgs = [{"role": "user", "text": REFLECT_PROMPT + item["caption"]},
            {"role": "assistant", "text": item["rich_caption"]},
            {"role": "assistant", "codes": A["codes"][first], "loss": not flawed},
            {"role": "user", "feats": A["feats"][first]},
            {"role": "assistant", "text": heard}]
    if not flawed:
        return msgs + [{"role": "assistant", "text": f"Plan: {heard} Heard: {heard} {NO_PROBLEM}"}]
    return msgs + [{"role": "assistant", "text": item["critique"]},
                   {"role": "assistant", "codes": A["codes"][item["reference"]]}]


# -----------------------------------------------------------------------------
# The LM's data: the manifests of --data split into training and held-out clips, and the
# tokenizer that reads them


def generation_clips(args):
    """The generation manifest of --data, split into (train, held-out) lists of records."""
    path = os.path.join(args.data, "generation.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: make the toy world first with "
                                f"`python data.py --out {args.data} --n 2000`")
    rows = read_generation(path)
    if len(rows) <= args.n_eval:
        raise ValueError(f"{path} has {len(rows)} clips, not more than --n_eval {args.n_eval}; make more with data.py")
    return rows[:-args.n_eval], rows[-args.n_eval:]


def texts_of(args):
    """Every text of the data folder: the tokenizer's training corpus."""
    gen = read_generation(os.path.join(args.data, "generation.jsonl"))
    out = [r[k] for r in gen for k in ("caption", "rich_caption", "vague_prompt")]
    out += [TTA_PROMPT, DIALOGUE_PROMPT, REFLECT_PROMPT, ASK_SOUNDS, ASK_LAYOUT, ASK_DETAILS, NO_PROBLEM]
    out += [a for r in gen for _, a in dialogue_turns(r)]
    out += [t["value"] for it in read_understanding(os.path.join(args.data, "understanding.json"))
            for t in it["conversations"]]
    out += [t["input"][0]["content"] + " " + t["output"] for t in read_text(os.path.join(args.data, "text.jsonl"))]
    out += [r["critique"] for r in read_reflection(os.path.join(args.data, "reflection.jsonl"))]
    return out


def get_tokenizer(args):
    """The run's tokenizer (parts.load_tokenizer): Qwen's with --init_from, else a SentencePiece
    model, trained on the data the first time."""
    folder = os.path.join(args.out, "tokenizer")
    if not args.init_from and not os.path.isfile(os.path.join(folder, "sentencepiece.model")):
        SPTokenizer.train(texts_of(args), folder, vocab_size=args.vocab_size)
    return load_tokenizer(parts_of(args), args.out)


def lm_data(args):
    """The manifests, each split into (train, held-out) by clip: {task: (train, held)}."""
    gen_train, gen_held = generation_clips(args)
    held = {r["location"] for r in gen_held}
    und = read_understanding(os.path.join(args.data, "understanding.json"))
    txt = read_text(os.path.join(args.data, "text.jsonl"))
    refl = read_reflection(os.path.join(args.data, "reflection.jsonl"))

    def split(items, key):
        return [i for i in items if i[key] not in held], [i for i in items if i[key] in held]

    def by_clip(items, most=16):  # a clip's questions as one conversation (understand), 16 at most
        groups = {}
        for it in items:
            groups.setdefault(it["sound"], []).append(it)
        return [g[i:i + most] for g in groups.values() for i in range(0, len(g), most)]
    clips = (gen_train, gen_held)
    return {"tta": clips, "enrich": clips, "dialogue": clips, "understand": tuple(map(by_clip, split(und, "sound"))),
            "text": (txt[:-args.n_eval], txt[-args.n_eval:]), "reflect": split(refl, "reference")}
