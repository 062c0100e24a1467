"""
The parts a UALM run is made of, chosen in one place: the backbone it starts from, the codec
it writes audio in, and the ears it hears audio through (SPEC.md sections 1-3).

    python train.py --stage gen --init_from Qwen2.5-0.5B --codec xcodec-hubert-general --encoder whisper-large-v3

    part      flag         given: a Hugging Face folder                  absent: the toy part, in the run folder
    backbone  --init_from  Qwen2.5 (Qwen2ForCausalLM) and its tokenizer  the --preset shape, runs/tokenizer/
    codec     --codec      X-codec (XcodecModel), 8 x 1024 at 50 Hz      codec.py's RVQ, runs/codec.pt
    ears      --encoder    Whisper's encoder, frozen, pooled to 25 Hz    CLAP's audio tower, runs/clap.pt

Each flag is optional. A run's first LM stage records the folders (absolute paths) in its
checkpoint's args; every later stage, sample.py, reason.py and eval.py read them from there
(adopt, run_parts), so no flag is repeated. CLAP's other jobs, the CLAP score of eval.py and
the ranking of DPO's pairs, stay with runs/clap.pt whatever the ears.
"""

import os

import torch

from checkpoint import load_ckpt, read_config
from clap import Clap
from codec import CODEBOOK_SIZE, FRAME_RATE, N_CODEBOOKS, SAMPLE_RATE, Codec
from encoder import load_whisper_encoder
from tokenizer import QwenTokenizer, SPTokenizer
from xcodec import XCodec

PARTS = {  # flag: (the model_type its config.json must hold, what to pass)
    "init_from": ("qwen2", "a Qwen2.5 folder (e.g. Qwen2.5-0.5B)"),
    "codec": ("xcodec", "an X-codec folder (e.g. xcodec-hubert-general)"),
    "encoder": ("whisper", "a Whisper folder (e.g. whisper-large-v3)"),
}
CACHED = ("codec", "encoder")  # the parts runs/cache.pt is made with: its codes and its encoder frames


def parts_of(args):
    """The parts args name: {flag: absolute folder, or None for the toy part}.
    e.g. --codec xc (run from /work) -> {"init_from": None, "codec": "/work/xc", "encoder": None}."""
    return {flag: os.path.abspath(getattr(args, flag)) if getattr(args, flag, None) else None for flag in PARTS}


def check_folder(flag, folder):
    """One clear error unless folder holds the kind of model --flag takes; for --init_from, also
    unless its tokenizer fits the checkpoint's vocabulary. Reads config.json (and the tokenizer), nothing else."""
    kind, what = PARTS[flag]
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"--{flag} {folder}: no config.json there; pass {what}")
    found = read_config(folder).get("model_type")
    if found != kind:
        raise ValueError(f"--{flag} {folder} holds a {found!r} model, not a {kind!r} one; pass {what}")
    if flag == "init_from":
        check_tokenizer(QwenTokenizer.from_pretrained(folder), read_config(folder)["vocab_size"], folder)


def check_tokenizer(tok, text_size, source):
    """One clear error when the tokenizer has ids the LM has no text rows for.
    e.g. a Qwen2.5 tokenizer (151665 ids) beside a config of vocab_size 320."""
    if tok.vocab_size > text_size:
        raise ValueError(f"the tokenizer of {source} has {tok.vocab_size} ids, more than the {text_size} text "
                         "rows of the checkpoint; pass the tokenizer files that came with the checkpoint")


def run_parts(ck, path):
    """The parts a checkpoint of train.py was trained with, read from its args, each folder
    checked to be still there: {flag: folder or None}."""
    parts = {flag: ck.get("args", {}).get(flag) for flag in PARTS}
    for flag, folder in parts.items():
        if folder and not os.path.isdir(folder):
            raise FileNotFoundError(f"{path} was trained with --{flag} {folder}, which is no longer there; "
                                    "put the folder back there, or retrain")
    return parts


def adopt(args, path, how, stage=None):
    """Make args name the parts the LM checkpoint at path was trained with, so a later stage
    goes on with them. A flag given that names another part is one clear error: a run keeps
    its parts from its first LM stage to its last."""
    recorded = run_parts(load_ckpt(path, "UALM", how, stage), path)
    for flag, given in parts_of(args).items():
        if given and given != recorded[flag]:
            raise ValueError(f"--{flag} {given} is not the {recorded[flag] or 'toy part'} that {path} was trained "
                             f"with; drop --{flag}")
        setattr(args, flag, recorded[flag])


def describe(parts):
    """{flag: folder or None} -> words. e.g. {"codec": "/m/xc", "encoder": None} -> '--codec /m/xc, toy encoder'."""
    return ", ".join(f"--{flag} {folder}" if folder else f"toy {flag}" for flag, folder in parts.items())

# -----------------------------------------------------------------------------
# Loading each part


def load_tokenizer(parts, out):
    """The run's tokenizer: Qwen's of --init_from, else the SentencePiece model in out/tokenizer/."""
    if parts["init_from"]:
        return QwenTokenizer.from_pretrained(parts["init_from"])
    return SPTokenizer.from_pretrained(os.path.join(out, "tokenizer"))


def load_codec(parts, out):
    """The codec the LM writes in: the X-codec of --codec, else out/codec.pt. Either one's
    encode takes (B, N) at 16 kHz to codes (B, 8, T) at 50 Hz, and decode takes them back."""
    if not parts["codec"]:
        return Codec.from_checkpoint(os.path.join(out, "codec.pt"))
    codec = XCodec.from_pretrained(parts["codec"], dtype=torch.float32)
    c = codec.config
    if (c.n_q, c.codebook_size, c.sample_rate, c.frame_rate) != (N_CODEBOOKS, CODEBOOK_SIZE, SAMPLE_RATE, FRAME_RATE):
        raise ValueError(f"--codec {parts['codec']} writes {c.n_q} codebooks of {c.codebook_size} at {c.frame_rate} Hz "
                         f"({c.sample_rate} Hz audio), the LM's layout is {N_CODEBOOKS} of {CODEBOOK_SIZE} at "
                         f"{FRAME_RATE} Hz ({SAMPLE_RATE} Hz audio); pass an X-codec of that shape "
                         "(e.g. xcodec-hubert-general)")
    return codec


def load_ears(parts, out):
    """What the LM hears through, frozen: Whisper's encoder of --encoder, else the audio tower of
    out/clap.pt. Both are encoder.AudioEncoder: ears.listen([wav (N,) at 16 kHz]) -> (frames
    (1, T25, d) at 25 Hz, lengths), the frames the adapter reads. e.g. 2 s -> (1, 50, d)."""
    if parts["encoder"]:
        ears = load_whisper_encoder(parts["encoder"])
    else:
        ears = Clap.from_checkpoint(os.path.join(out, "clap.pt")).audio
    return ears.eval().requires_grad_(False)
