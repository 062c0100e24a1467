"""Training X-codec's toy preset on the toy world (the network is xcodec.py's): first a toy
semantic teacher (a Hubert that learns which events sound in each frame), frozen, then the
codec with X-codec's objectives (multi-resolution spectral and mel reconstruction, the semantic
reconstruction through the semantic decoder, commitment with moving-average codebooks and dead
codes restarted; the adversarial terms left out). Linear probes tell how much meaning the
teacher's frames and the codec's first codebook carry.

    python xcodec_train.py --out runs/xcodec --minutes 10   # teacher, codec, then scores and probes on held-out clips
"""

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import rvq
from clap import N_TAGS, frame_tags
from checkpoint import load_module, save_checkpoint
from codec import Codec, evaluate_codec, print_evaluation, spectral_losses, world_clips
from toy.world import KEYWORDS
from utils import fail, learning_rate
from xcodec import PRESETS, SAMPLE_RATE, Hubert, ResidualVQ, XCodec, XCodecConfig

# -----------------------------------------------------------------------------
# Training the toy preset, part 1: a semantic teacher that hears the toy world's events
#
# X-codec's teacher is HuBERT, pretrained by masked prediction of k-means units of speech. The
# toy world has exact labels instead: which events sound in each frame. A Hubert trained on
# those hears events directly, in a few CPU minutes, where masked prediction of units would
# first have to discover them. Either way the teacher is trained before the codec and frozen.

HOP = 320  # samples per frame in the toy presets: DAC strides 8*5*4*2 = HuBERT strides 5*2**6
FRAME_RATE = SAMPLE_RATE // HOP  # 50 Hz
N_KEYWORDS = len(KEYWORDS)
SILENCE = N_KEYWORDS  # the probe's class of a frame where nothing sounds
PROBE_RIDGE = 1e-3  # the probe's ridge, as a share of the mean feature energy


def event_frames(events, n_frames):
    """A plan's events -> (n_frames, N_TAGS) 0/1 targets at 50 Hz, frame t covering [t/50, (t+1)/50) s:
    clap.frame_tags' tags at the codec's frame rate. e.g. a drum with hits at 0.1 s and 0.5 s, offset
    0.8 s: 'drum sounding' in frames 5..40, 'drum unit starts' in frames 5 and 25."""
    return frame_tags(events, n_frames, rate=FRAME_RATE)


def frame_labels(events, n_frames):
    """The probe's class of each frame (n_frames,): the one keyword sounding, SILENCE, or -1 where
    two sound at once. e.g. a hum over 0.1..0.5 s, 30 frames -> [9]*5 + [0]*21 + [9]*4."""
    sounding = event_frames(events, n_frames)[:, :N_KEYWORDS]
    labels = sounding.argmax(1)
    labels[sounding.sum(1) == 0] = SILENCE
    labels[sounding.sum(1) > 1] = -1
    return labels


def teacher_features(teacher: Hubert, wav):
    """XCodec.semantic_features from a teacher alone, with gradients: wav (B, N) -> the mean of its
    hidden states on the clip padded by HOP/2 each side (B, T, D); (1, 16000) -> (1, 50, D)."""
    return torch.stack(teacher(F.pad(wav, (HOP // 2, HOP // 2))), 1).mean(1)


def as_tensors(clips):
    """[(wav (N,) array, events)] -> [wav (N,) float32 tensor]."""
    return [torch.as_tensor(np.asarray(wav, np.float32)) for wav, _ in clips]


def random_crops(wavs, frames, batch, generator):
    """Where `batch` random crops of `frames` frames go: [(clip, first frame)], each clip drawn at random
    and the crop inside it where it fits (at 0 where the clip is shorter). e.g. a 1.5 s clip and
    frames 50 -> first frame 0..25."""
    clips = torch.randint(len(wavs), (batch,), generator=generator).tolist()
    return [(i, int(torch.randint(max(1, (len(wavs[i]) - frames * HOP) // HOP + 1), (), generator=generator)))
            for i in clips]


def cut(x, start, length):
    """x[start:start + length] along dim 0, zero-padded to `length`: (arange(5), 3, 4) -> [3, 4, 0, 0]."""
    piece = x[start:start + length]
    return torch.cat([piece, piece.new_zeros(length - len(piece), *piece.shape[1:])])


def crop_batch(wavs, frames, batch, generator):
    """`batch` random crops of `frames` frames of 16 kHz clips [(N_i,)] -> (B, frames * HOP)."""
    return torch.stack([cut(wavs[i], t * HOP, frames * HOP) for i, t in random_crops(wavs, frames, batch, generator)])


def planned_steps(step, steps, elapsed, budget, warmup):
    """The learning-rate schedule's length under a step cap and a time budget (s, or None): the steps
    the budget holds at the pace so far, measured after the warm-up. e.g. (step 100, cap 5000,
    50 s elapsed, budget 600 s, warmup 20) -> 1200; budget None -> 5000."""
    if budget is None or step < warmup:
        return steps
    return max(step + 1, min(steps, int(step * budget / elapsed)))


def train_teacher(clips, config="toy", steps=2000, seed=0, progress=True, minutes=None, batch=16, seconds=2.0,
                  lr=1e-3, warmup=50) -> Hubert:
    """The toy world's semantic teacher: Hubert(config.semantic) trained, with a linear head, to tag
    each 20 ms frame of random crops of [(wav, events)] clips with event_frames (binary cross-entropy),
    read from the mean of its hidden states, exactly the feature X-codec takes from its teacher.
    Stops after `steps` or `minutes`, whichever comes first; -> the Hubert, frozen (eval, no grad)."""
    cfg = PRESETS[config] if isinstance(config, str) else config
    torch.manual_seed(seed)
    teacher, head = Hubert(cfg.semantic), nn.Linear(cfg.semantic.hidden_size, N_TAGS)
    params = list(teacher.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    wavs = as_tensors(clips)
    tags = [event_frames(events, -(-len(w) // HOP)) for w, (_, events) in zip(wavs, clips)]
    generator, frames = torch.Generator().manual_seed(seed), round(seconds * FRAME_RATE)
    budget, start, step = None if minutes is None else 60 * minutes, time.time(), 0
    bar = tqdm(total=steps, desc="teacher", disable=not progress)
    while step < steps and (budget is None or time.time() - start < budget):
        bar.total = planned = planned_steps(step, steps, time.time() - start, budget, warmup)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, planned, lr, warmup)
        crops = random_crops(wavs, frames, batch, generator)
        wav = torch.stack([cut(wavs[i], t * HOP, frames * HOP) for i, t in crops])  # (B, frames * HOP)
        target = torch.stack([cut(tags[i], t, frames) for i, t in crops])  # (B, frames, N_TAGS)
        loss = F.binary_cross_entropy_with_logits(head(teacher_features(teacher, wav)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return teacher.eval().requires_grad_(False)


@torch.no_grad()
def probe_events(features, clips) -> float:
    """How well a frame's features name the event sounding in it, by a linear probe: ridge least
    squares from the features (and a bias) to the one-hot class (frame_labels: the one keyword
    sounding or SILENCE; frames with two are left out), fitted on the frames of the even-numbered
    clips, scored on the odd ones. features: a teacher (Hubert: teacher_features) or a function
    wav (1, N) -> (T, F) at 50 Hz, e.g. first_codes(codec). -> accuracy on the held-out frames.
    e.g. features that are the one-hot of the class itself -> 1.0; random ones -> about the share of
    the commonest class (the bias alone)."""
    if isinstance(features, Hubert):
        teacher = features
        features = lambda wav: teacher_features(teacher, wav)[0]  # noqa: E731
    xs, ys = ([], []), ([], [])
    for i, (wav, (_, events)) in enumerate(zip(as_tensors(clips), clips)):
        f = features(wav[None]).double()  # (T, F)
        y = frame_labels(events, len(f))
        xs[i % 2].append(f[y >= 0])
        ys[i % 2].append(y[y >= 0])
    x_fit, x_test = (F.pad(torch.cat(x), (0, 1), value=1.0) for x in xs)  # and a bias column
    y_fit, y_test = (torch.cat(y) for y in ys)
    gram = x_fit.T @ x_fit  # (F + 1, F + 1)
    ridge = PROBE_RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    w = torch.linalg.solve(gram + ridge, x_fit.T @ F.one_hot(y_fit, N_KEYWORDS + 1).double())
    return ((x_test @ w).argmax(1) == y_test).double().mean().item()


def first_codes(codec, size=1024):
    """A codec's first codebook as probe features: wav (1, N) -> the one-hot of codebook 1's code in
    each frame (T, size). Any codec whose encode gives (B, n_q, T) at 50 Hz: XCodec, codec.Codec."""
    return lambda wav: F.one_hot(codec.encode(wav)[0, 0], size).float()


# -----------------------------------------------------------------------------
# Training the toy preset, part 2: X-codec's objectives
#
# The RVQ learns as in EnCodec (which X-codec's quantiser is): each code is the moving average of
# the vectors it is nearest to, not a gradient step; codes that fall out of use restart at random
# current residuals; the encoder is pulled toward its codes by a commitment loss and gets the
# decoder's gradient straight through the quantiser. The codebooks stay the Codebook.embed
# buffers that encode/decode read; the moving averages live beside them in QuantizerEMA.


@dataclass
class TrainConfig:  # how train_xcodec trains; saved in the checkpoint beside the model's config
    batch: int = 8  # crops per step
    seconds: float = 1.0  # crop length
    lr: float = 1e-3
    betas: tuple = (0.8, 0.99)  # X-codec's AdamW
    warmup: int = 50
    grad_clip: float = 2.0  # X-codec's
    decay: float = 0.99  # of the codebooks' moving averages (EnCodec's)
    dead_share: float = 0.03  # a code whose average use per batch falls below this share of the mean restarts
    kmeans_batches: int = 8  # batches whose residuals seed the codebooks by k-means
    kmeans_iters: int = 10
    # loss weights (X-codec: STFT terms 1, commitment 1, semantic MSE 100 on HuBERT's features)
    stft: float = 1.0  # multi-resolution STFT: spectral convergence + L1 of log magnitudes
    mel: float = 1.0  # multi-resolution log10-mel L1
    semantic: float = 10.0  # MSE of the semantic decoder's output to the teacher's features (about unit variance)
    commit: float = 1.0


def ema_update(embed, cluster_size, embed_avg, x, codes, decay, eps=1e-5):
    """One moving-average step of a codebook, in place (EnCodec's EuclideanCodebook in training):
    cluster_size <- decay cluster_size + (1 - decay) counts, embed_avg <- decay embed_avg + (1 - decay) sums,
    embed <- embed_avg / cluster_size, the sizes Laplace-smoothed so an empty cluster is not divided by 0.
    embed (K, D), cluster_size (K,), embed_avg (K, D); x (M, D) and codes (M,) its nearest codes.
    e.g. decay 0.5, one code of size 1 at 0, two vectors 2 and 4 on it -> size 1.5, sum 3, code 2."""
    counts = torch.bincount(codes, minlength=len(embed)).to(x.dtype)
    sums = torch.zeros_like(embed_avg).index_add_(0, codes, x)
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
    n = cluster_size.sum()
    embed.copy_(embed_avg / ((cluster_size + eps) / (n + len(embed) * eps) * n)[:, None])


def restart_dead(embed, cluster_size, embed_avg, x, threshold, generator=None):
    """Codes whose average use per batch (cluster_size) is below `threshold` restart, in place, at
    distinct random rows of x (M, D), the current residuals; each counts as used by the batch's mean
    share M / K, so it has time to be found before it could be called dead again. -> the restarted
    mask (K,). e.g. sizes [5, 0, 2], threshold 1 -> code 1 becomes one of x's rows."""
    dead = cluster_size < threshold
    n = int(dead.sum())
    if n:
        new = x[torch.randperm(len(x), generator=generator)[torch.arange(n) % len(x)]]
        share = len(x) / len(embed)
        embed[dead], cluster_size[dead], embed_avg[dead] = new, share, new * share
    return dead


class QuantizerEMA(nn.Module):
    """The training state of an XCodec's RVQ, per codebook: the moving averages of each code's
    cluster size (n_q, K) and vector sum (n_q, K, D) (transformers' training-only cluster_size and
    embed_avg). Trains the codebooks of the ResidualVQ it is given, in place."""

    def __init__(self, config: XCodecConfig, decay, dead_share):
        super().__init__()
        n_q, K, D = config.num_quantizers, config.codebook_size, config.hidden_size
        self.decay, self.dead_share = decay, dead_share
        self.register_buffer("cluster_size", torch.zeros(n_q, K))
        self.register_buffer("embed_avg", torch.zeros(n_q, K, D))

    @torch.no_grad()
    def init_kmeans(self, quantizer: ResidualVQ, x, batches, iters, generator=None):
        """Codebooks by k-means on x (M, D), the first `batches` batches' vectors: codebook k on what
        codebooks 1..k-1 leave (rvq.ResidualVQ.fit); cluster sizes from its assignments, per batch."""
        n_q, K, D = self.embed_avg.shape
        kmeans = rvq.ResidualVQ(n_q, K, D)
        kmeans.fit(x, iters, len(x), generator, progress=False)
        codes = kmeans.encode(x)  # (M, n_q), greedy
        for k, q in enumerate(quantizer.quantizers):
            q.codebook.embed.copy_(kmeans.codebooks[k])
            self.cluster_size[k] = torch.bincount(codes[:, k], minlength=K) / batches
            self.embed_avg[k] = kmeans.codebooks[k] * self.cluster_size[k, :, None]

    def forward(self, quantizer: ResidualVQ, x, n_q, generator=None):
        """Quantise x (B, T, D) with the first n_q codebooks and train them on it: -> (the quantised
        vectors (B, T, D), with x's gradient straight through, codes (B, n_q, T), commitment loss).
        The commitment of codebook k is |x - (code 1 + ... + code k)|^2, the mean over codebooks, so
        the encoder is pulled toward its coding at every depth. (EnCodec passes on a residual with
        no gradient, so only codebook 1's reaches the encoder.)"""
        residual, codes, commitment = x, [], 0.0
        for k, q in enumerate(quantizer.quantizers[:n_q]):
            book, flat = q.codebook, residual.detach().reshape(-1, x.shape[-1])  # (M, D)
            code = book.encode(flat)  # (M,): the nearest code, as encode picks it
            chosen = F.embedding(code, book.embed).view_as(x)  # a copy: the updates below leave it
            commitment = commitment + F.mse_loss(residual, chosen)
            with torch.no_grad():
                ema_update(book.embed, self.cluster_size[k], self.embed_avg[k], flat, code, self.decay)
                restart_dead(book.embed, self.cluster_size[k], self.embed_avg[k], flat,
                             self.dead_share * len(flat) / len(book.embed), generator)
            residual = residual - chosen
            codes.append(code.view(x.shape[:-1]))
        quantized = x - residual.detach()  # (code 1 + ... + code n_q) in value, x in gradient
        return quantized, torch.stack(codes, 1), commitment / n_q


def bandwidth_codebooks(config: XCodecConfig):
    """The codebooks each target bandwidth uses, X-codec's quantiser dropout draws one per step:
    (0.5, 1, 1.5, 2, 4) kbps at 50 Hz x 10 bits -> [1, 2, 3, 4, 8]."""
    per_codebook = math.log2(config.codebook_size) * config.frame_rate / 1000  # kbps
    return sorted({min(config.num_quantizers, max(1, math.floor(b / per_codebook))) for b in config.target_bandwidths})


def latent(codec: XCodec, wav):
    """encode's path up to the RVQ, with gradients: wav (B, N), N a multiple of HOP ->
    (what the RVQ quantises (B, T, D), the frozen teacher's features (B, T, D_semantic)), T = N / HOP."""
    target = codec.semantic_features(wav)  # no gradient: the teacher is frozen
    semantic = codec.encoder_semantic(target.transpose(1, 2))  # (B, D_s, T)
    acoustic = codec.acoustic_encoder(wav[:, None])  # (B, D_a, T)
    return codec.fc(torch.cat([acoustic, semantic], 1).transpose(1, 2)), target


def xcodec_losses(codec: XCodec, ema: QuantizerEMA, wav, n_q, recipe: TrainConfig, generator=None):
    """X-codec's objectives on crops wav (B, N), quantised with n_q codebooks (which this trains):
    -> (the weighted sum, {'stft', 'mel', 'semantic', 'commit'} as floats). Reconstruction of the
    waveform (codec.spectral_losses), of the teacher's features through the semantic decoder, and
    commitment. X-codec's adversarial terms are left out, as in codec.py."""
    x, target = latent(codec, wav)
    quantized, _, commit = ema(codec.quantizer, x, n_q, generator)
    y = codec.acoustic_decoder(codec.fc2(quantized).transpose(1, 2))[:, 0]  # (B, N)
    recon = codec.decoder_semantic(codec.fc1(quantized).transpose(1, 2)).transpose(1, 2)  # (B, T, D_s)
    parts = spectral_losses(y, wav) | {"semantic": F.mse_loss(recon, target), "commit": commit}
    return sum(getattr(recipe, k) * v for k, v in parts.items()), {k: float(v.detach()) for k, v in parts.items()}


def save_xcodec(path, codec: XCodec, step, recipe: TrainConfig):
    """Write {kind, config, model, step, recipe} atomically (checkpoint.save_checkpoint): the model's
    inference weights, the teacher's included (the moving averages are not kept); load_xcodec rebuilds it."""
    save_checkpoint(path, codec, step, recipe=asdict(recipe))


def load_xcodec(path, config: XCodecConfig | None = None) -> XCodec:
    """An XCodec saved by train_xcodec, in eval mode, or one clear error (checkpoint.load_module)."""
    return load_module(XCodec, XCodecConfig, path, "python xcodec_train.py --out DIR", config)


def train_xcodec(out_dir, clips, config="toy", seed=0, minutes=None, steps=20_000, teacher=None, progress=True,
                 recipe: TrainConfig | None = None) -> XCodec:
    """Train an XCodec on random crops of [(wav, events)] clips with X-codec's objectives and write
    out_dir/xcodec.pt (atomically, also every 500 steps). teacher: a trained Hubert of config.semantic
    (train_teacher), copied in and frozen; None trains one first. The codebooks start from k-means on
    the first batches' vectors; each step draws a bandwidth (quantiser dropout); AdamW on the
    utils.learning_rate schedule; stops after `steps` or `minutes`, whichever comes first."""
    cfg = PRESETS[config] if isinstance(config, str) else config
    recipe = recipe or TrainConfig()
    teacher = teacher if teacher is not None else train_teacher(clips, cfg, seed=seed, progress=progress)
    start = time.time()
    torch.manual_seed(seed)
    codec = XCodec(cfg)
    codec.semantic_model.load_state_dict(teacher.state_dict())
    codec.semantic_model.requires_grad_(False)
    params = [p for p in codec.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas, weight_decay=0.01)
    ema, wavs, generator = QuantizerEMA(cfg, recipe.decay, recipe.dead_share), as_tensors(clips), torch.Generator()
    generator.manual_seed(seed)
    frames, n_qs = round(recipe.seconds * cfg.frame_rate), bandwidth_codebooks(cfg)
    with torch.no_grad():
        x = torch.cat([latent(codec, crop_batch(wavs, frames, recipe.batch, generator))[0].flatten(0, 1)
                       for _ in range(recipe.kmeans_batches)])
    ema.init_kmeans(codec.quantizer, x, recipe.kmeans_batches, recipe.kmeans_iters, generator)
    budget = None if minutes is None else 60 * minutes - (time.time() - start)  # the k-means start counts too
    start, step = time.time(), 0
    bar = tqdm(total=steps, desc="xcodec", disable=not progress)
    while step < steps and (budget is None or time.time() - start < budget):
        bar.total = planned = planned_steps(step, steps, time.time() - start, budget, recipe.warmup)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, planned, recipe.lr, recipe.warmup)
        n_q = n_qs[int(torch.randint(len(n_qs), (), generator=generator))]
        wav = crop_batch(wavs, frames, recipe.batch, generator)
        loss, parts = xcodec_losses(codec, ema, wav, n_q, recipe, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        step += 1
        bar.update()
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if step % 500 == 0:
            save_xcodec(Path(out_dir) / "xcodec.pt", codec, step, recipe)
    bar.close()
    save_xcodec(Path(out_dir) / "xcodec.pt", codec, step, recipe)
    return codec.eval()


class AsToyCodec:
    """An XCodec behind codec.Codec's interface, so codec.evaluate_codec scores both codecs alike:
    clips padded to whole frames, the teacher's features (B, T, D), those decoded from codes (B, D, T)."""

    def __init__(self, codec: XCodec):
        self.codec = codec

    @staticmethod
    def _frames(wav):  # (B, N) -> (B, N') zero-padded to a multiple of HOP
        return F.pad(wav, (0, -wav.shape[-1] % HOP))

    def encode(self, wav):
        return self.codec.encode(self._frames(wav))

    def decode(self, codes):
        return self.codec.decode(codes)

    def teacher(self, wav):
        return self.codec.semantic_features(wav)

    def semantic(self, codes):
        return self.codec.decode_semantic(codes).transpose(1, 2)


def evaluate_xcodec(codec: XCodec, clips) -> dict:
    """codec.evaluate_codec for an XCodec, on [(wav, events)] clips: -> {'log_mel_distance',
    'semantic_error' (of the teacher's features decoded from the codes), 'original', 'reconstruction'
    (the analyzer's scores)}."""
    return evaluate_codec(AsToyCodec(codec), clips)


def main():
    p = argparse.ArgumentParser(description="Train the toy X-codec on the toy world (the semantic teacher, then "
                                "the codec) and score it on held-out clips.")
    p.add_argument("--out", default="runs/xcodec", help="folder for xcodec.pt")
    p.add_argument("--preset", default="toy", choices=list(PRESETS), help="model size")
    p.add_argument("--minutes", type=float, default=10.0, help="the codec's training budget (wall clock)")
    p.add_argument("--steps", type=int, default=20_000, help="the codec's step cap")
    p.add_argument("--teacher-minutes", type=float, default=2.0, help="the teacher's training budget")
    p.add_argument("--teacher-steps", type=int, default=2000, help="the teacher's step cap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-seed", type=int, default=0, help="seed of the toy world")
    p.add_argument("--clips", type=int, default=1000, help="training clips: world indices 0..clips-1")
    p.add_argument("--eval-clips", type=int, default=200, help="held-out clips: indices from 1000000 on")
    p.add_argument("--eval-only", action="store_true", help="score out/xcodec.pt without training")
    p.add_argument("--compare", default=None, help="a codec.py checkpoint (e.g. runs/codec/codec.pt) whose "
                   "codebook 1 is probed too")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if min(args.minutes, args.teacher_minutes) <= 0 or min(args.steps, args.teacher_steps) < 1:
        fail("give --minutes, --teacher-minutes, --steps and --teacher-steps above 0.")
    if min(args.clips, args.eval_clips) < 2:
        fail("give --clips and --eval-clips of 2 or more (the probe fits on half the clips, scores the other).")
    path = Path(args.out) / "xcodec.pt"
    if args.eval_only and not path.is_file():
        fail(f"{path} not found: train it first with `python xcodec_train.py --out {args.out}`.")
    if args.compare and not Path(args.compare).is_file():
        fail(f"--compare {args.compare}: no such file; train one with `python codec.py --out DIR`.")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval_only:
        codec = load_xcodec(path)
    else:
        start = time.time()
        clips = world_clips(args.world_seed, tqdm(range(args.clips), desc="world"))
        print(f"synthesised {len(clips)} clips in {time.time() - start:.0f} s")
        start = time.time()
        teacher = train_teacher(clips, args.preset, args.teacher_steps, args.seed, minutes=args.teacher_minutes)
        print(f"teacher trained in {time.time() - start:.0f} s")
        start = time.time()
        codec = train_xcodec(args.out, clips, args.preset, args.seed, args.minutes, args.steps, teacher)
        print(f"codec trained in {time.time() - start:.0f} s -> {path}")
    held_out = world_clips(args.world_seed, range(1_000_000, 1_000_000 + args.eval_clips))
    result = evaluate_xcodec(codec, held_out)
    print_evaluation(result)
    probes = {"majority class": lambda wav: torch.zeros(-(-wav.shape[-1] // HOP), 1),  # the bias alone
              "teacher features": codec.semantic_model,
              "xcodec codebook 1": first_codes(codec, codec.config.codebook_size)}
    if args.compare:
        probes["codec.py codebook 1"] = first_codes(Codec.from_checkpoint(args.compare))
    print("linear probe, the event sounding in each frame (held-out clips):")
    for name, features in probes.items():
        print(f"  {name:>20}: {100 * probe_events(features, held_out):5.1f}%")


if __name__ == "__main__":
    main()
