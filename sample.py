"""
Sample from a trained UALM: text -> 48 kHz stereo audio, or (audio, question) -> text.

    python sample.py --prompt "a bell rings twice, then a low hum" --out out.wav
    python sample.py --prompts_file captions.txt --out out.wav   # one caption a line, in batches: out_0.wav, ...
    python sample.py --prompt "then a drum hits twice" --continue bell.wav --out more.wav   # bell.wav, then more
    python sample.py --audio clip.wav --prompt "How many beeps are there?"
    python sample.py --text --prompt "What is 12 plus 7?"                # text in, text out

Audio is written by classifier-free guidance exactly as the release does it (SPEC.md
section 6): the conditional prefix and an all-pad prefix of the same length run as one
batch through the static KV cache, both fed the same sampled frames, and
logits = g * cond + (1 - g) * uncond. Each codebook samples from its own interval
(temperature, top-k); the delay pattern decides which cells are forced to pad; the
frame stream ends when codebook 0 samples its pad, and 7 steps later all codebooks
have finished. The codes are reverted, decoded by the codec and lifted to 48 kHz
stereo by the VAE. A clip longer than the context holds is written in windows that each
keep the caption and continue from the last seconds of audio (generate_windows).
"""

import argparse
import os
from dataclasses import dataclass

import soundfile as sf
import torch
from tqdm import tqdm

from checkpoint import load_ckpt, module_from
from clap import Clap, pad_ids
from codec import FRAME_RATE, HOP, SAMPLE_RATE
from data import load_audio
from encoder import MIN_SAMPLES, AudioEncoder
from model import (ASSISTANT, AUDIO, DTYPES, EOS, EOT, INTERVAL, N_SPECIAL, N_STREAMS, PAD, TEXT, UALM, UALMConfig,
                   compile_step, sample_next)
from parts import check_tokenizer, load_codec, load_ears, load_tokenizer, run_parts
from sequences import build, delay_cells, delay_pattern, undelay_pattern
from utils import fail
from vae import MASTER_SR, EnhanceVAE


@dataclass
class Runtime:
    """Everything sampling needs, from one folder of train.py's checkpoints and the parts the
    run was trained with (parts.py)."""
    model: UALM
    tok: object
    codec: object  # codec.Codec or xcodec.XCodec: encode (B, N) -> (B, 8, T), decode back
    ears: AudioEncoder  # what the model hears through (parts.load_ears)
    clap: Clap  # the CLAP score's model (eval.py), None unless asked for
    vae: EnhanceVAE
    device: str


def load_runtime(ckpt, need_vae=True, device="cpu", dtype=None, need_clap=False):
    """runs/sft.pt -> Runtime with the run's tokenizer, codec and ears (its recorded parts, or
    the toy ones beside it: tokenizer/, codec.pt, clap.pt), and vae.pt (and clap.pt's CLAP)
    beside it. dtype: the LM's weights and KV cache (None: as saved, fp32); its logits are
    read in fp32."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"{ckpt}: no such checkpoint; train one with `python train.py --stage all` "
                                "or pass --ckpt")
    how = "python train.py --stage all"
    ck = load_ckpt(ckpt, "UALM", how)
    model = module_from(UALM, UALMConfig, ck, ckpt, how)
    parts = run_parts(ck, ckpt)
    tok = load_tokenizer(parts, folder)
    check_tokenizer(tok, model.cfg.text_size, parts["init_from"] or os.path.join(folder, "tokenizer"))
    codec, ears = load_codec(parts, folder), load_ears(parts, folder)
    clap = Clap.from_checkpoint(os.path.join(folder, "clap.pt")).to(device) if need_clap else None
    vae = EnhanceVAE.from_checkpoint(os.path.join(folder, "vae.pt")).to(device) if need_vae else None
    return Runtime(model.eval().to(device, dtype), tok, codec.eval().to(device), ears.to(device), clap, vae, device)


@torch.no_grad()
def listen(rt, path_or_wave):
    """A wav file (any rate, any channels) or a 16 kHz waveform -> encoder frames (T25, d)."""
    x = load_audio(path_or_wave) if isinstance(path_or_wave, str) else path_or_wave
    return rt.ears.listen([torch.as_tensor(x, device=rt.device)])[0][0]


@torch.no_grad()
def to_wave(rt, codes, vae=True):
    """codes (8, T) -> (waveform, sample rate): codec decode, then the VAE to 48 kHz stereo (2, N).
    A clip of no frames (the model ended it at once) is a waveform of no samples."""
    if codes.shape[1] == 0:
        return (torch.zeros(0), SAMPLE_RATE) if not vae else (torch.zeros(2, 0), MASTER_SR)
    wav = rt.codec.decode(codes[None].to(rt.device))  # (1, N) at 16 kHz
    if not vae:
        return wav[0].cpu(), SAMPLE_RATE
    return rt.vae(wav)[0].cpu(), MASTER_SR


def audible(codes):
    """Is a clip of codes (8, T) long enough for the encoder to hear (30 ms, 2 frames)?"""
    return codes.shape[1] * HOP >= MIN_SAMPLES


@torch.no_grad()
def clap_order(rt, prompt, clips):
    """Candidate clips [(8, T_i) codes] for one prompt -> their indices, best first by the CLAP
    score of clip and prompt (rt.clap); clips too short to hear come last, in their order.
    Best of N: draw several clips and keep the one the CLAP hears closest to the prompt, the
    reranking text-to-audio systems use, paid for with N clips' sampling time."""
    heard = [i for i, c in enumerate(clips) if audible(c)]
    scores = {}
    if heard:
        waves = [rt.codec.decode(clips[i][None].long().to(rt.device))[0] for i in heard]
        ids = pad_ids([rt.tok.encode(prompt)] * len(heard), rt.tok.vocab_size).to(rt.device)
        scores = dict(zip(heard, rt.clap.score(waves, ids).tolist()))
    return sorted(heard, key=lambda i: -scores[i]) + [i for i in range(len(clips)) if i not in scores]


PEAK = 0.99  # the loudest sample a written file may hold: full scale less a margin, so nothing clips
MAX_SECONDS = 10.0  # the longest clip written unless --max_seconds says otherwise
AUDIO_FORMATS = (".wav", ".flac")  # what write_audio writes, chosen by the file's extension


def write_audio(rt, codes, path, vae=True):
    """codes (8, T) -> a wav or flac file (by the extension; its folder is made if missing);
    returns its length in seconds. A clip whose peak is above PEAK is scaled down to it as a
    whole (peak normalisation), so the file never clips; quieter clips are written as they are."""
    wav, sr = to_wave(rt, codes, vae)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak > PEAK:
        wav = wav * (PEAK / peak)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sf.write(path, wav.T.numpy() if wav.dim() == 2 else wav.numpy(), sr)
    return wav.shape[-1] / sr


def prefix(messages, tok, cfg, modality=None):
    """The conversation so far, then <|assistant|> (and the modality when it is forced):
    -> (rows (L, 8), feats or None). When the assistant spoke last, its END is <|eot|>: it
    goes on with another segment of the same turn, e.g. the audio after its rich caption."""
    s = build(messages, tok.encode, cfg)
    if messages[-1]["role"] == "assistant":
        s.ids[-1, 0] = EOT  # build ends a conversation with <|eos|>
    extra = [ASSISTANT] + ([modality] if modality is not None else [])
    rows = torch.cat([s.ids, torch.tensor([[t] + [PAD] * (N_STREAMS - 1) for t in extra])])
    return rows, s.feats


def decode_step(model, x, pos, mask, position_ids):
    """One step of the frame loop: embeddings x (B, 1, d) written at cache slot pos (1,), with
    the slots each row may see, mask (B, 1, 1, S), and each row's position id (B, 1) -> the
    next frame's per-codebook logits (B, 8, 1025) in fp32. Every shape is the same at every
    step (the attention reads the whole cache under the mask), so `--compile` can replace
    this with torch.compile(decode_step), as gpt-fast does."""
    return model.audio_logits(model.lm.model(x, position_ids, mask, input_pos=pos)[:, -1]).float()


TEXT_TOKENS = 200  # the longest answer generate_text writes
CACHE_ROUND = 64  # cache lengths are rounded up to this, so a compiled step meets few shapes
# Audio codes are drawn at TEMPERATURE among each codebook's TOP_K likeliest codes (of 1024).
# A small k keeps a weakly trained model (the 30-minute pipeline's) off the far tail of its
# codes, which holds junk that runs on. It also cuts what is rare on any one frame: in a steady
# noise's frames each codebook's probability is spread over many codes, and the quieter codes
# that begin the noise's fade-out, after which the clip ends, rank far down, so at k = 20 a
# well-trained model's hiss never fades and runs to the length cap. A model trained longer
# samples better with --top_k 100 (AudioCraft's MusicGen and AudioGen draw among 250).
TEMPERATURE, TOP_K = 0.8, 20


@torch.no_grad()
def generate_audio(model, rows, feats=None, n=1, cfg_scale=3.0, temperature=TEMPERATURE, top_k=TOP_K,
                   max_frames=500, generator=None, prompt_codes=None, progress=False, step=None):
    """Text (and heard audio) -> codes, with classifier-free guidance through one KV cache.

    rows: a prompt (L, 8) ending in <|assistant|> <|audio|>, or a list of prompts, sampled
    together as one batch. -> for each prompt in turn, n codes (8, T_i), T_i <= max_frames:
    [prompt 0 sample 0, prompt 0 sample 1, ..., prompt 1 sample 0, ...]. Each row stops on
    its own, when its codebook 0 writes its pad.
    feats: the prompt's encoder frames (M, d), or for a list of prompts a list of them (None
    where a prompt hears nothing).
    prompt_codes: (8, T0) codes the audio starts with (continuation): laid under the delay
    pattern after every prompt, and the returned codes begin with them (T0 < max_frames).
    With cfg_scale == 1 the unconditional branch is skipped; else each row has a twin of the
    same length whose prompt is all pad (what cfg_dropout trains), and the two logits mix as
    g * cond + (1 - g) * uncond for the codes. The end is drawn from cond alone: the twin has
    no caption to finish, and guidance would stretch the gap between its chance of ending and
    cond's into clips cut early or run on; a clip's length is the prompted model's to decide.

    Prompts of other lengths are left-padded to the longest: a row's padding slots are hidden
    from its queries and its position ids start at 0 at its first real row, so each row
    computes what it would alone. progress: a progress bar over the frame steps. step: the frame
    step, decode_step by default (sample.py --compile passes torch.compile(decode_step)).
    """
    step = step or decode_step
    prompts = list(rows) if isinstance(rows, (list, tuple)) else [rows]
    feats = list(feats) if isinstance(feats, (list, tuple)) else [feats] * len(prompts)
    cfg, device = model.cfg, model.lm.lm_head.weight.device
    guided = cfg_scale != 1.0
    m = n * len(prompts)  # rows that are sampled; with CFG, their unconditional twins follow
    T0 = 0 if prompt_codes is None else prompt_codes.shape[1]
    if T0 >= max_frames:
        raise ValueError(f"the audio to continue has {T0} frames, max_frames {max_frames} leaves no room to write")
    head = delay_pattern(prompt_codes[None].long())[0, :, :T0] + 1 if T0 else None  # (8, T0) interval indices
    grids = [p if head is None else torch.cat([p, cfg.audio_ids(head - 1).T]) for p in prompts]
    L = max(len(g_) for g_ in grids)
    x = torch.zeros(m, L, N_STREAMS, dtype=torch.long)  # PAD everywhere, then each prompt at the right
    pad = torch.tensor([L - len(g_) for g_ in grids for _ in range(n)])
    for j, g_ in enumerate(grids):
        x[j * n:(j + 1) * n, L - len(g_):] = g_
    f = [fj for fj in feats for _ in range(n) if fj is not None]
    f = torch.cat(f).to(device) if f else None
    if guided:  # the unconditional twins: pad where the prompt is, the continued audio kept
        uncond = torch.zeros_like(x)
        if T0:
            uncond[:, L - T0:] = x[:, L - T0:]
        x, pad = torch.cat([x, uncond]), torch.cat([pad, pad])
    x, pad = x.to(device), pad.to(device)
    S = -(-(L + max_frames - T0 + N_STREAMS) // CACHE_ROUND) * CACHE_ROUND
    model.setup_cache(x.shape[0], S)
    slots = torch.arange(S, device=device)
    valid = slots[None] >= pad[:, None]  # (B, S): the slots that are not padding
    q = torch.arange(L, device=device)
    mask = ((slots[None] <= q[:, None])[None] & valid[:, None]) | (slots[None] == q[:, None])[None]  # a pad sees itself
    h = model(x, f, position_ids=(q[None] - pad[:, None]).clamp(min=0), mask=mask[:, None], input_pos=q)
    logits = model.audio_logits(h[:, -1]).float()
    first = cfg.audio_offset + INTERVAL * torch.arange(N_STREAMS, device=device)  # each interval's pad id
    k = torch.arange(N_STREAMS, device=device)
    steps = [head[:, s].to(device).expand(m, N_STREAMS) for s in range(T0)]
    end = torch.full((m,), max_frames, device=device)  # frame count T of each sample, once known
    bar = tqdm(total=max_frames + N_STREAMS - 1, initial=T0, desc="frames", unit="frame", disable=not progress)
    for s in range(T0, max_frames + N_STREAMS - 1):
        bar.update()
        cells = delay_cells(s, end)  # (m, 8): False where the delay pattern puts a pad
        if guided:  # the end (codebook 0's pad) is drawn from the conditional branch alone; the codes, guided
            stop = sample_next(logits[:m, 0], temperature, top_k, generator) == 0
            logits = cfg_scale * logits[:m] + (1 - cfg_scale) * logits[m:]
            logits[:, 0, 0] = float("-inf")
        logits[..., 1:, 0] = logits[..., 1:, 0].masked_fill(cells[:, 1:], float("-inf"))  # no early pad
        idx = sample_next(logits, temperature, top_k, generator)  # (m, 8)
        if guided:
            idx[:, 0] = idx[:, 0].masked_fill(stop, 0)
        idx = idx.masked_fill(~cells, 0)
        known = (s - k < T0) & (s - k >= 0)  # cells the continued audio already holds
        if known.any():
            idx[:, known] = prompt_codes[known, (s - k)[known]].to(device).long() + 1
        stopped = (idx[:, 0] == 0) & (end == max_frames) & (s < max_frames)
        end = torch.where(stopped, torch.full_like(end, s), end)  # codebook 0's pad: T = s frames
        steps.append(idx)
        if s >= int(end.max()) + N_STREAMS - 2:
            break
        row = (first + idx)[:, None]  # (m, 1, 8) unified ids
        row = torch.cat([row, row]) if guided else row
        slot = L + s - T0
        logits = step(model, model.embed(row), torch.tensor([slot], device=device),
                             ((slots <= slot)[None] & valid)[:, None, None], (slot - pad)[:, None])
    bar.close()
    delayed = torch.stack(steps, -1) - 1  # (m, 8, S), -1 where pad
    return [undelay_pattern(delayed[i:i + 1, :, :int(end[i]) + N_STREAMS - 1])[0] for i in range(m)]


KEEP_SECONDS = 5.0  # audio each window past the first carries over from the one before: what it continues from


def window_room(model, rows):
    """Frames one generate_audio call may hold after the longest prompt of rows (a prompt
    (L, 8) or a list): the context less the prompt and N_STREAMS rows (the delay pattern's
    last 7 rows and the END after them). e.g. context 4096, a 30-row prompt -> 4058."""
    prompts = list(rows) if isinstance(rows, (list, tuple)) else [rows]
    return model.lm.cfg.max_position_embeddings - max(len(p) for p in prompts) - N_STREAMS


@torch.no_grad()
def generate_windows(model, rows, feats=None, n=1, max_frames=500, prompt_codes=None, progress=False, **kw):
    """generate_audio for clips of any length: the same arguments and result, n codes (8, T_i)
    per prompt, T_i <= max_frames, also where max_frames is more than the context holds.

    When max_frames fits in window_room, this is one generate_audio call. Otherwise the clips
    are written in windows, each a generate_audio call of at most window_room frames: the
    first for all the rows at once, then each clip that has not ended alone, window after
    window. A window's prompt is the clip's caption (its conversation prefix) and its audio
    starts with the last `keep` frames written so far (prompt_codes: laid under the delay
    pattern, so the model sees them as its own history), keep = KEEP_SECONDS of frames or
    half the room when that is less; the frames it writes after them are appended. So every
    frame of a seam is the one the previous window wrote. A clip ends when a window ends by
    itself (codebook 0's pad) or at max_frames. --continue's clip is the audio written so far.
    e.g. room 36, keep 18, max_frames 100: windows of 36, then 18 kept + 18 new, three
    times, then 18 kept + 10 new.
    """
    room = window_room(model, rows)
    if max_frames <= room:
        return generate_audio(model, rows, feats, n, max_frames=max_frames, prompt_codes=prompt_codes,
                              progress=progress, **kw)
    if room < 2:
        raise ValueError(f"the prompt leaves {max(room, 0)} frame(s) of the context for audio; windows need 2")
    keep = min(int(KEEP_SECONDS * FRAME_RATE), room // 2)
    prompts = list(rows) if isinstance(rows, (list, tuple)) else [rows]
    feats = list(feats) if isinstance(feats, (list, tuple)) else [feats] * len(prompts)
    done = torch.zeros(N_STREAMS, 0, dtype=torch.long) if prompt_codes is None else prompt_codes.long().cpu()

    def window(rows_, feats_, m, written):
        """One window after `written` (8, t) frames -> (the frames it adds, has it ended by itself)."""
        start = written[:, -keep:] if written.shape[1] else None
        t0 = 0 if start is None else start.shape[1]
        size = t0 + min(room - t0, max_frames - written.shape[1])
        out = generate_audio(model, rows_, feats_, m, max_frames=size, prompt_codes=start, progress=progress, **kw)
        return [(c[:, t0:].cpu(), c.shape[1] < size) for c in out]

    clips = [(torch.cat([done, new], 1), ended) for new, ended in window(prompts, feats, n, done)]
    for i, (codes, ended) in enumerate(clips):
        while not ended and codes.shape[1] < max_frames:
            [(new, ended)] = window(prompts[i // n], feats[i // n], 1, codes)  # this clip alone
            codes = torch.cat([codes, new], 1)
        clips[i] = codes
    return clips


@torch.no_grad()
def generate_text(model, rows, feats=None, max_tokens=TEXT_TOKENS):
    """Greedy: rows (L, 8) ending in <|assistant|> <|text|> -> token ids up to and with the END
    the model wrote, <|eot|> (its turn goes on) or <|eos|> (its turn is over); without one
    when max_tokens ran out first. e.g. [ids of 'Keywords: bell', EOT]. decode_text drops
    the END. Stream 0 may only write text and special ids here (the audio intervals are masked)."""
    device = model.lm.lm_head.weight.device
    L = rows.shape[0]
    model.setup_cache(1, L + max_tokens)
    h = model(rows[None].to(device), feats, input_pos=torch.arange(L, device=device))[:, -1]
    out = []
    for i in range(max_tokens):
        logits = model.text_logits(h)[0]
        logits[model.cfg.audio_offset:] = float("-inf")
        t = int(logits.argmax())
        out.append(t)
        if t in (EOS, EOT):
            break
        row = torch.zeros(1, 1, N_STREAMS, dtype=torch.long, device=device)
        row[0, 0, 0] = t
        h = model(row, input_pos=torch.tensor([L + i], device=device))[:, -1]
    return out


def decode_text(tok, ids):
    return tok.decode([i - N_SPECIAL for i in ids if i >= N_SPECIAL])


@torch.no_grad()
def next_token_among(model, rows, feats, among):
    """The id of `among` that stream 0 ranks highest after rows (L, 8): the argmax of one
    full forward, restricted to those ids. e.g. among (TEXT, AUDIO) after <|assistant|>."""
    device = model.lm.lm_head.weight.device
    logits = model.text_logits(model(rows[None].to(device), feats)[:, -1])[0]
    return max(among, key=lambda t: float(logits[t]))


def choose_modality(model, rows, feats=None):
    """The token after <|assistant|> is chosen by argmax between <|text|> and <|audio|>."""
    return next_token_among(model, rows, feats, (TEXT, AUDIO))


def choose_end(model, rows, feats=None):
    """The END of a segment the model did not end itself: after its audio's last delay row
    (generate_audio stops there), or after text cut at max_tokens: the argmax between
    <|eot|> (another segment of the same turn follows) and <|eos|> (the turn is over)."""
    return next_token_among(model, rows, feats, (EOT, EOS))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default=None, help="a caption to generate, or a question about --audio")
    p.add_argument("--prompts_file", default=None, help="a text file of captions, one a line: a batch")
    p.add_argument("--text", action="store_true", help="answer --prompt in text, as a text model (no audio)")
    p.add_argument("--audio", default=None, help="a wav to ask about (any rate and channels: resampled, downmixed)")
    p.add_argument("--ckpt", default="runs/sft.pt", help="an LM checkpoint written by train.py")
    p.add_argument("--out", default="out.wav",
                   help="the audio file to write, .wav or .flac (its folder is made if missing); a clip louder "
                        f"than {PEAK} of full scale is peak-normalised to it, so files never clip")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale, 0 or more (1 = off)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="0 or more (0 = greedy)")
    p.add_argument("--top_k", type=int, default=TOP_K, help="sample among the k likeliest codes, 1 or more")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_samples", type=int, default=1, help="clips per prompt, 1 or more")
    p.add_argument("--best_of", type=int, default=1, help="draw this many clips for each one written and keep the "
                   "one the run's CLAP (clap.pt) scores closest to the prompt, 1 or more")
    p.add_argument("--max_seconds", type=float, default=MAX_SECONDS,
                   help="the longest clip, in seconds (more than 0); longer than the context holds, it is written "
                        f"in windows, each continuing from the last {KEEP_SECONDS:g} s of the one before")
    p.add_argument("--continue", dest="continue_from", default=None, metavar="CLIP",
                   help="an audio file (any rate and channels) whose codes start the audio: the written file is "
                        "the clip followed by what the model writes after it")
    p.add_argument("--batch_size", type=int, default=8, help="prompts of --prompts_file sampled together, each "
                   "with its --num_samples, as one batch")
    p.add_argument("--no_vae", action="store_true", help="write the codec's 16 kHz mono, not 48 kHz stereo")
    p.add_argument("--compile", action="store_true", help="torch.compile the frame step (slow first call)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="the LM's weights while sampling: auto is bf16 on CUDA, fp32 on CPU")
    args = p.parse_args()
    for bad, why in ((args.cfg < 0, f"--cfg {args.cfg:g}: give a guidance scale of 0 or more (1 = off, 3 = default)"),
                     (args.temperature < 0, f"--temperature {args.temperature:g}: give 0 (greedy) or more"),
                     (args.top_k < 1, f"--top_k {args.top_k}: give 1 or more"),
                     (args.num_samples < 1, f"--num_samples {args.num_samples}: give 1 or more"),
                     (args.best_of < 1, f"--best_of {args.best_of}: give 1 or more"),
                     (args.best_of > 1 and (args.audio or args.text), "--best_of ranks clips; drop it with --audio "
                      "or --text, which answer in text"),
                     (args.batch_size < 1, f"--batch_size {args.batch_size}: give 1 or more"),
                     (not args.max_seconds > 0, f"--max_seconds {args.max_seconds:g}: give a length above 0"),
                     (args.max_seconds == float("inf"), "--max_seconds inf: give a finite number of seconds"),
                     (os.path.splitext(args.out)[1].lower() not in AUDIO_FORMATS,
                      f"--out {args.out}: name a .wav or .flac file")):
        if bad:
            fail(why)
    step = compile_step(decode_step, args.device) if args.compile else decode_step  # CUDA graphs on CUDA
    prompts = [args.prompt]
    if args.prompts_file:
        if args.prompt or args.audio or args.text:
            fail("--prompts_file is a batch of captions to generate; drop --prompt, --audio and --text")
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            fail(f"{args.prompts_file}: cannot read it ({why}); give a UTF-8 text file, one caption a line")
        if not prompts:
            fail(f"{args.prompts_file} holds no caption; write one caption a line")
    elif not args.prompt or not args.prompt.strip():
        fail("--prompt is empty; give a caption (or a question with --audio or --text)")
    try:
        dtype = DTYPES.get(args.dtype, torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
        rt = load_runtime(args.ckpt, need_vae=not (args.no_vae or args.audio or args.text), device=args.device,
                          dtype=dtype, need_clap=args.best_of > 1)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    torch.manual_seed(args.seed)
    g = torch.Generator(device=rt.device).manual_seed(args.seed)
    if args.audio or args.text:  # text out: a question about the audio, or a text-only prompt
        messages = [{"role": "user", "text": args.prompt}]
        if args.audio:
            try:
                messages.append({"role": "user", "feats": listen(rt, args.audio)})
            except (FileNotFoundError, ValueError) as e:
                fail(str(e))
        rows, f = prefix(messages, rt.tok, rt.model.cfg, TEXT)
        if rows.shape[0] + TEXT_TOKENS > rt.model.lm.cfg.max_position_embeddings:
            fail(f"the prompt is {rows.shape[0]} tokens: too long for the context; shorten it")
        print(decode_text(rt.tok, generate_text(rt.model, rows, f, max_tokens=TEXT_TOKENS)))
        return
    from tasks import TTA_PROMPT
    batch = [prefix([{"role": "user", "text": TTA_PROMPT + text}], rt.tok, rt.model.cfg, AUDIO)[0] for text in prompts]
    context, max_frames = rt.model.lm.cfg.max_position_embeddings, int(args.max_seconds * FRAME_RATE)
    for j, rows in enumerate(batch):  # every prompt checked before the first is generated
        room = window_room(rt.model, rows)  # frames the context holds after it
        where = f"line {j + 1} of {args.prompts_file}" if args.prompts_file else "the prompt"
        if room < 2:
            fail(f"{where} is {rows.shape[0]} tokens, which leaves no room for audio in the context of "
                 f"{context}; shorten it")
    room = window_room(rt.model, batch)
    if max_frames > room:
        keep = min(KEEP_SECONDS, room // 2 / FRAME_RATE)
        print(f"--max_seconds {args.max_seconds:g} is more than the context holds ({room / FRAME_RATE:.2f} s): "
              f"writing in windows, each continuing from the last {keep:.2f} s of the one before")
    stem, ext = os.path.splitext(args.out)
    start = None
    if args.continue_from:  # the clip's codes start every sample's audio
        try:
            wav = torch.from_numpy(load_audio(args.continue_from, sr=SAMPLE_RATE, mono=True))
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        start = rt.codec.encode(wav[None].to(rt.device))[0].cpu()
        if start.shape[1] >= max_frames:
            fail(f"{args.continue_from} lasts {wav.shape[0] / SAMPLE_RATE:.2f} s, not less than --max_seconds "
                 f"{args.max_seconds:g}; raise --max_seconds to leave room for the continuation")
    for first in range(0, len(batch), args.batch_size):
        chunk = batch[first:first + args.batch_size]
        n = args.num_samples * args.best_of  # drawn per prompt; with --best_of, the CLAP's best are kept
        drawn = generate_windows(rt.model, chunk, n=n, cfg_scale=args.cfg, temperature=args.temperature,
                                 top_k=args.top_k, max_frames=max_frames, generator=g, prompt_codes=start,
                                 progress=True, step=step)
        codes = []
        for c_j in range(len(chunk)):
            mine = drawn[c_j * n:(c_j + 1) * n]
            if args.best_of > 1:
                mine = [mine[i] for i in clap_order(rt, prompts[first + c_j], mine)]
            codes += mine[:args.num_samples]
        for c_i, c in enumerate(codes):
            j, i = first + c_i // args.num_samples, c_i % args.num_samples
            tags = ([f"{j}"] if args.prompts_file else []) + ([f"{i}"] if args.num_samples > 1 else [])
            path = "_".join([stem] + tags) + ext if tags else args.out
            seconds = write_audio(rt, c, path, vae=not args.no_vae)
            print(f"wrote {path} ({seconds:.2f} s){': ' + prompts[j] if args.prompts_file else ''}")

if __name__ == "__main__":
    main()
