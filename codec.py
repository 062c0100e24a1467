"""The audio tokenizer UALM writes audio in (X-codec, SPEC.md section 2): an RVQ codec,
16 kHz audio <-> 8 x 1024 tokens at 50 Hz, the "mouth" of the model.

X-codec (Ye et al. 2024, "Codec does matter") quantises acoustic and semantic features
together, so the first codebooks carry meaning as well as sound:

    wav [B, N] --STFT (n_fft 1280, hop 320)--> |X| [B, 641, T] --^0.4--> principal axes --> [B, T, 256]
    wav --frozen semantic teacher--> [B, 128, T] --principal axes, scaled--> [B, T, 32]
        concat --> [B, T, 288] --RVQ, 8 codebooks of 1024--> codes [B, 8, T]
        --> sum of the codes' vectors --> acoustic part --axes back, ^(1/0.4)--> |X| [B, 641, T]
                                       --Griffin-Lim--> wav [B, 320 T]
                                      --> semantic part --axes back--> [B, 128, T], the teacher's features

Where X-codec learns its encoder and decoder (strided convs down from the waveform,
transposed convs back up, days of GPU training), ours are linear maps fitted to the
training frames, and only the codebooks are learned, by k-means (rvq.py). Each frame is
its magnitude spectrum, compressed by a power 0.4 (loud bins keep their detail, quiet
ones their presence), then written as coordinates on the 256 principal axes of the
training frames; decoding maps the codes' coordinates back and Griffin-Lim finds a
phase. The LM-side interface is X-codec's: the same codes at 50 Hz, the same delay pattern.

Why fitted linear maps and not a trained encoder and decoder: the projection onto the
principal axes keeps almost everything the toy world's analyzer hears, so the only loss
that matters is the quantiser's (8 codebooks x 10 bits = 80 bits per frame), and k-means
spends those bits where the training frames vary most. A learned conv encoder/decoder
would have to learn that projection as well, from far more training; the fit here takes
minutes on a CPU, is deterministic from its seed, and a beam search over the codebooks
(rvq.py) lowers the quantiser's error further.

The teacher in X-codec is a frozen HuBERT, a network that learned what sounds mean. No
weights can be downloaded here, so the stand-in comes in two kinds (CodecConfig.teacher):
- "log-mel": a fixed transform, Whisper's 128-bin log-mel (encoder.py) at 100 Hz pooled to
  50 Hz. Frozen by construction, but it knows no more than the spectrum does.
- "encoder": the audio tower of the toy world's CLAP (clap.py), trained before the codec to
  tag which events sound in each frame, then frozen: like HuBERT, a network that hears
  meaning. Its 25 Hz features serve two codec frames each (the "toy-semantic" preset).
Either way the codec keeps the teacher's top 32 principal axes, scaled before the RVQ so
that they hold `semantic_share` of the acoustic part's variance: the codebooks spend that
share of their effort on them, the first codebook most, and the semantic part of the
decoded vector reconstructs the teacher's features (evaluate_codec reports how well).

The adversarial term of X-codec (and of DAC/EnCodec) is left out with the trained
decoder: it buys perceptual crispness after days of GPU training, whereas the toy world
is scored by spectral analysis. The LM sees the tokens through the delay pattern.

    python codec.py --out runs/codec     # toy preset: fit on 3000 clips (minutes on a CPU), then score
    python codec.py --out runs/codec --eval-only --budget   # how much error the analyzer tolerates (error_budget)
"""

import argparse
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from checkpoint import load_module, save_checkpoint  # noqa: F401 (save_checkpoint is re-exported)
from encoder import ENCODER_PRESETS, AudioEncoder, log_mel_spectrogram, mel_filters
from rvq import ResidualVQ
from toy.analyzer import adherence, analyze
from utils import fail

# ---------------------------------------------------------------------------------------
# Constants (X-codec's; model.py's N_STREAMS and CODEBOOK_SIZE must equal these)

SAMPLE_RATE = 16000
HOP = 320  # samples per frame (X-codec's encoder strides 8 * 5 * 4 * 2)
FRAME_RATE = SAMPLE_RATE // HOP  # 50 Hz
N_CODEBOOKS = 8  # 8 x 10 bits x 50 Hz = 4 kbps
CODEBOOK_SIZE = 1024
TEACHER_DIM = 128  # log-mel bins of the stand-in semantic teacher
N_FFT = 1280  # 80 ms frames, 4 x HOP: 12.5 Hz bins resolve the 100..200 Hz hums
N_BINS = N_FFT // 2 + 1  # 641 magnitudes per frame, what the decoder gives back
GL_ITERS = 32  # Griffin-Lim iterations in decode
# (n_fft, n_mels) of the evaluation's log-mel distance; hop n_fft / 4. 2048 resolves the 150 Hz hums, 256 the clicks
RESOLUTIONS = ((2048, 128), (1024, 80), (512, 64), (256, 32))
LOG_FLOOR = 1e-2  # added to |STFT| and mels before the log in spectral_losses


@dataclass
class CodecConfig:
    n_components: int = 256  # principal axes of the compressed magnitude frames (the acoustic coordinates)
    semantic_components: int = 32  # principal axes of the teacher's features
    semantic_share: float = 0.1  # the semantic coordinates' variance, as a share of the acoustic ones'
    power: float = 0.4  # |X| ** power before the axes: between linear (quiet bins vanish) and log (noise weighs as much as peaks)
    kmeans_iters: int = 10  # Lloyd steps per codebook
    kmeans_sample: int = 200_000  # frames per Lloyd step (a fresh random draw each step)
    beam: int = 8  # candidates kept per codebook when encoding (1 = greedy): lets the later codebooks undo an early choice
    # the frozen semantic teacher: "log-mel" (a fixed transform) or "encoder" (a trained encoder.py tower
    # that hears the world's events, CLAP's: train.py fits the codec after --stage clap and copies it in)
    teacher: str = "log-mel"


CODEC_PRESETS = {
    "toy": CodecConfig(),
    "toy-semantic": CodecConfig(teacher="encoder", semantic_share=1.0),
    "micro": CodecConfig(n_components=32, semantic_components=4, kmeans_iters=3),
}


# ---------------------------------------------------------------------------------------
# The semantic teacher (frozen, non-learned stand-in for HuBERT)


def teacher_features(wav: torch.Tensor) -> torch.Tensor:
    """wav [B, N] (N a multiple of 320) -> [B, 128, N // 320]: log-mel pooled from 100 to 50 Hz.

    Whisper's scaling ((log10 + 4) / 4, 80 dB range) already puts it in about [-1.5, 1.5].
    e.g. teacher_features(torch.zeros(1, 16000)) is a (1, 128, 50) tensor of -1.5.
    """
    return F.avg_pool1d(log_mel_spectrogram(wav, TEACHER_DIM), 2)


# ---------------------------------------------------------------------------------------
# Frames: the STFT grid the codec works on, and Griffin-Lim to get back to a waveform


def stft_frames(wav: torch.Tensor) -> torch.Tensor:
    """wav [B, 320 T] -> complex STFT [B, 641, T]: Hann window N_FFT, hop 320, centred; frame t is centred on sample 320 t.

    torch.stft gives T + 1 centred frames for 320 T samples; the last (centred on the end,
    half padding) is dropped so that frames and codes line up one to one. The centring pads
    with zeros (silence before and after), not reflection, which also works for one frame.
    e.g. stft_frames(torch.zeros(1, 16000)).shape == (1, 641, 50).
    """
    window = torch.hann_window(N_FFT, device=wav.device)
    return torch.stft(wav, N_FFT, HOP, window=window, pad_mode="constant", return_complex=True)[..., :-1]


def griffin_lim(mag: torch.Tensor, iters: int = GL_ITERS, momentum: float = 0.99) -> torch.Tensor:
    """Phase for a magnitude: |STFT| [B, 641, T] (stft_frames' grid) -> wav [B, 320 T], deterministic.

    Fast Griffin-Lim (Perraudin et al. 2013): alternate between the set of spectrograms
    with this magnitude and the set of consistent ones (STFTs of some waveform), with
    momentum on the projection. The phase starts from a fixed-seed random draw, so the same
    magnitude always gives the same waveform. The last frame is repeated once to cover the
    tail, as stft_frames dropped it. e.g. the exact |STFT| of a 440 Hz sine comes back as a
    sine whose magnitude is within a few percent (tests/test_codec.py).
    """
    window = torch.hann_window(N_FFT, device=mag.device)
    mag = torch.cat([mag, mag[..., -1:]], -1)  # [B, F, T + 1]
    length = HOP * (mag.shape[-1] - 1)
    generator = torch.Generator().manual_seed(0)
    phase = torch.rand(mag.shape, generator=generator).to(mag.device)
    angles = torch.polar(torch.ones_like(mag), 2 * math.pi * phase)
    previous = torch.zeros_like(angles)
    for _ in range(iters):
        wav = torch.istft(mag * angles, N_FFT, HOP, window=window, length=length)
        spec = torch.stft(wav, N_FFT, HOP, window=window, pad_mode="constant", return_complex=True)  # consistent
        angles = spec - momentum / (1 + momentum) * previous
        angles = angles / angles.abs().clamp(min=1e-8)
        previous = spec
    return torch.istft(mag * angles, N_FFT, HOP, window=window, length=length)


# ---------------------------------------------------------------------------------------
# The codec


def principal_axes(x: torch.Tensor, n: int):
    """Rows x [N, F] -> (mean [F], the top n eigenvectors of their covariance as rows [n, F], their variances [n])."""
    mean = x.double().mean(0)
    centred = (x - mean.float()).double()
    variance, vectors = torch.linalg.eigh(centred.T @ centred / (len(x) - 1))  # ascending
    top = variance.argsort(descending=True)[:n]
    return mean.float(), vectors[:, top].T.float(), variance[top].float()


class Codec(nn.Module):
    """encode: wav [B, N] -> codes [B, 8, N / 320]; decode: codes -> wav; fit: the axes and codebooks from clips."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        cfg = self.config = config
        # principal axes of the compressed magnitude frames and of the teacher's features (fit sets them)
        self.register_buffer("mean", torch.zeros(N_BINS))  # the mean frame [641]
        self.register_buffer("basis", torch.eye(N_BINS)[:cfg.n_components])  # orthonormal rows [K, 641]
        self.register_buffer("semantic_mean", torch.zeros(TEACHER_DIM))
        self.register_buffer("semantic_basis", torch.eye(TEACHER_DIM)[:cfg.semantic_components])  # [S, 128]
        self.register_buffer("semantic_scale", torch.ones(()))  # the teacher's coordinates times this
        self.quantizer = ResidualVQ(N_CODEBOOKS, CODEBOOK_SIZE, cfg.n_components + cfg.semantic_components)
        if cfg.teacher not in ("log-mel", "encoder"):
            raise ValueError(f"CodecConfig.teacher {cfg.teacher!r}: use 'log-mel' or 'encoder'")
        # the frozen tower (its 128-wide 25 Hz features, each used for two codec frames); fit copies its weights in
        self.teacher_net = AudioEncoder(ENCODER_PRESETS["toy"]).requires_grad_(False) if cfg.teacher == "encoder" else None

    @staticmethod
    def _frames(wav: torch.Tensor) -> torch.Tensor:
        """[B, N] or [B, 1, N] -> [B, N'] zero-padded on the right to a multiple of 320 samples."""
        wav = wav.reshape(wav.shape[0], -1).float()
        return F.pad(wav, (0, -wav.shape[-1] % HOP))

    def compress(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, 320 T] -> |STFT| ** power [B, T, 641], the frames the acoustic axes describe."""
        return stft_frames(wav).abs().pow(self.config.power).transpose(1, 2)

    def teacher(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, 320 T] -> the teacher's features [B, T, 128]: the log-mel of teacher_features, or
        the encoder tower's 25 Hz frames, each twice (frame t of the codec hears tower frame t // 2)."""
        if self.teacher_net is None:
            return teacher_features(wav).transpose(1, 2)
        T = wav.shape[-1] // HOP
        feats, _ = self.teacher_net.listen(list(wav))  # [B, ~T / 2, 128]
        feats = feats.repeat_interleave(2, dim=1)[:, :T]
        return F.pad(feats, (0, 0, 0, T - feats.shape[1]))  # a last odd frame hears silence

    def coordinates(self, compressed: torch.Tensor, taught: torch.Tensor) -> torch.Tensor:
        """[..., 641] and [..., 128] -> what the RVQ quantises [..., K + S]: acoustic coordinates, then scaled semantic ones."""
        acoustic = (compressed - self.mean) @ self.basis.T
        semantic = (taught - self.semantic_mean) @ self.semantic_basis.T * self.semantic_scale
        return torch.cat([acoustic, semantic], -1)

    @torch.no_grad()
    def fit(self, clips: list, generator: torch.Generator | None = None, progress: bool = True, teacher=None):
        """Fit the axes and the codebooks to clips [(N,) float arrays at 16 kHz], all their frames.
        teacher: the trained encoder tower whose weights the "encoder" teacher takes (frozen)."""
        cfg = self.config
        if self.teacher_net is not None:
            if teacher is None:
                raise ValueError("this codec's semantic teacher is an encoder tower: pass the trained one (teacher=)")
            self.teacher_net.load_state_dict(teacher.state_dict())
        wavs = [self._frames(torch.as_tensor(np.asarray(c, np.float32))[None]) for c in clips]
        frames = torch.cat([self.compress(w)[0] for w in wavs])  # [N, 641]
        taught = torch.cat([self.teacher(w)[0] for w in wavs])  # [N, 128]
        self.mean, self.basis, acoustic_variance = principal_axes(frames, cfg.n_components)
        self.semantic_mean, self.semantic_basis, semantic_variance = principal_axes(taught, cfg.semantic_components)
        self.semantic_scale.fill_(math.sqrt(cfg.semantic_share * acoustic_variance.sum() / semantic_variance.sum()))
        self.quantizer.fit(self.coordinates(frames, taught), cfg.kmeans_iters, cfg.kmeans_sample, generator, progress)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, N] or [B, 1, N] at 16 kHz -> codes [B, 8, ceil(N / 320)] int64 in 0..1023.

        e.g. 1 s of audio, [1, 16000] -> [1, 8, 50].
        """
        wav = self._frames(wav)
        z = self.coordinates(self.compress(wav), self.teacher(wav))  # [B, T, D]
        B, T, D = z.shape
        return self.quantizer.encode(z.reshape(B * T, D), self.config.beam).view(B, T, N_CODEBOOKS).transpose(1, 2)

    def _decoded(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, 8, T] -> the sum of their code vectors [B, T, K + S]."""
        if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
            raise ValueError("codes hold pad (-1) or out-of-range values; undelay_pattern and strip pads "
                             "before decoding.")
        B, K, T = codes.shape
        return self.quantizer.decode(codes.transpose(1, 2).reshape(B * T, K)).view(B, T, -1)

    @torch.no_grad()
    def magnitude(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, 8, T] -> the |STFT| they stand for [B, 641, T]."""
        return self.spectrum(self._decoded(codes))

    def spectrum(self, vectors: torch.Tensor) -> torch.Tensor:
        """What the RVQ quantises, [B, T, K + S] -> the |STFT| of its acoustic part [B, 641, T]."""
        compressed = (vectors[..., :self.config.n_components] @ self.basis + self.mean).clamp(min=0)  # [B, T, 641]
        return compressed.pow(1 / self.config.power).transpose(1, 2)

    @torch.no_grad()
    def semantic(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, 8, T] -> the teacher's features they stand for [B, 128, T]."""
        coordinates = self._decoded(codes)[..., self.config.n_components:] / self.semantic_scale
        return (coordinates @ self.semantic_basis + self.semantic_mean).transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, 8, T] -> wav [B, 320 T] at 16 kHz: their magnitudes, a phase by Griffin-Lim. [1, 8, 50] -> [1, 16000]."""
        return griffin_lim(self.magnitude(codes))

    @classmethod
    def from_checkpoint(cls, path, config: CodecConfig | None = None) -> "Codec":
        """Load a codec saved by save_checkpoint; with `config`, also check it equals the saved one."""
        return load_module(cls, CodecConfig, path, "python codec.py --out DIR", config)


# ---------------------------------------------------------------------------------------
# The evaluation's spectral distance


@lru_cache(maxsize=None)
def mel_bank(n_fft: int, n_mels: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """encoder.mel_filters with each triangle's peak at 1, cached: (1024, 80) -> [80, 513]."""
    return mel_filters(n_mels, n_fft, sample_rate, slaney=False)


def magnitude(wav: torch.Tensor, n_fft: int) -> torch.Tensor:
    """wav [B, N] -> |STFT| [B, n_fft // 2 + 1, frames] (Hann window, hop n_fft / 4, centred)."""
    window = torch.hann_window(n_fft, device=wav.device)
    return torch.stft(wav, n_fft, n_fft // 4, window=window, return_complex=True).abs()


def log_mel(mag: torch.Tensor, n_mels: int) -> torch.Tensor:
    """|STFT| [B, F, frames] -> log10 mel magnitudes [B, n_mels, frames]."""
    n_fft = 2 * (mag.shape[-2] - 1)
    return (mel_bank(n_fft, n_mels).to(mag.device) @ mag + LOG_FLOOR).log10()


def spectral_losses(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Multi-resolution STFT and mel losses between waveforms, each a mean over RESOLUTIONS: wav [B, N] x 2 -> {'stft', 'mel'}.

    stft = spectral convergence (relative Frobenius error) + L1 of log magnitudes;
    mel = L1 of log10 mel magnitudes: evaluate_codec's log-mel distance, which judges the
    whole round trip (Griffin-Lim included). The fit does not use it (k-means minimises
    the squared error of the compressed magnitudes). LOG_FLOOR is added before the log,
    not clamped, as in a loss: under a clamp a bin left silent gets no gradient.
    """
    stft = mel = 0.0
    for n_fft, n_mels in RESOLUTIONS:
        p, t = magnitude(pred, n_fft), magnitude(target, n_fft)
        convergence = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=LOG_FLOOR)
        stft = stft + convergence + F.l1_loss((p + LOG_FLOOR).log(), (t + LOG_FLOOR).log())
        mel = mel + F.l1_loss(log_mel(p, n_mels), log_mel(t, n_mels))
    return {"stft": stft / len(RESOLUTIONS), "mel": mel / len(RESOLUTIONS)}


# ---------------------------------------------------------------------------------------
# Fitting and evaluation


def world_clips(seed: int, indices) -> list:
    """Toy-world clips (data.py): (0, range(2)) -> [(16 kHz mono float32 (N,), ground-truth events), ...]."""
    examples = (data.make_example(seed, i) for i in indices)
    return [(ex["audio"], ex["plan"]["events"]) for ex in examples]


def train_codec(out_dir, clips: list, config: CodecConfig | str = "toy", seed: int = 0, progress: bool = True,
                teacher=None) -> Codec:
    """Fit a codec to 16 kHz mono clips [(N,) arrays] and write out_dir/codec.pt (atomically).

    The principal axes of all the clips' frames, then the RVQ's codebooks by k-means on
    their coordinates. Deterministic from `seed` (the k-means samples and restarts).
    teacher: the trained encoder tower of an "encoder"-teacher preset (CLAP's audio tower).
    """
    config = CODEC_PRESETS[config] if isinstance(config, str) else config
    codec = Codec(config)
    codec.fit(clips, torch.Generator().manual_seed(seed), progress, teacher)
    save_checkpoint(Path(out_dir) / "codec.pt", codec, 1)
    return codec.eval()


@torch.no_grad()
def evaluate_codec(codec: Codec, clips: list) -> dict:
    """Reconstruct each (wav, true events) clip and score it: -> {'log_mel_distance', 'semantic_error', 'original', 'reconstruction'}.

    log_mel_distance: the multi-resolution log10-mel L1 (spectral_losses' 'mel') of
    reconstruction vs original, mean over clips. semantic_error: the squared error of the
    teacher's features decoded from the codes, as a share of their variance over the clips
    (0 exact, 1 no better than their mean). 'original' / 'reconstruction': how often
    world.analyze recovers the true events / layout (order) / counts / pitch, and their
    mean 'score', from the original and from the codec's reconstruction (fractions).
    """
    distances, scores, taught, decoded = [], {"original": [], "reconstruction": []}, [], []
    for wav, truth in tqdm(clips, desc="codec eval", leave=False):
        x = torch.as_tensor(np.asarray(wav, np.float32))[None]  # [1, N]
        codes = codec.encode(x)
        y = codec.decode(codes)[:, :x.shape[-1]]  # [1, N]
        distances.append(float(spectral_losses(y, x)["mel"]))
        taught.append(codec.teacher(codec._frames(x))[0])
        decoded.append(codec.semantic(codes)[0].T)
        scores["original"].append(adherence(analyze(x[0].numpy()), truth))
        scores["reconstruction"].append(adherence(analyze(y[0].numpy()), truth))
    taught, decoded = torch.cat(taught), torch.cat(decoded)
    semantic_error = float((decoded - taught).pow(2).sum() / (taught - taught.mean(0)).pow(2).sum())
    mean = {name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for name, rows in scores.items()}
    return {"log_mel_distance": float(np.mean(distances)), "semantic_error": semantic_error, **mean}


@torch.no_grad()
def error_budget(codec: Codec, clips: list, scales=(0.0, 1.0, 0.5, 0.25), leading: int = 64) -> dict:
    """Where the quantiser's error goes, and how much error the analyzer tolerates: (wav, true events) clips -> {'curve', 'noisy', 'leading_axes'}.

    curve: for k = 1..8, the squared error of the clips' coordinates (summed over the axes,
    mean over frames) when only the first k codebooks code them (beam search), split into
    the `leading` acoustic axes, the other acoustic axes and the semantic part.
    noisy: {scale: the analyzer's mean score} when each clip's true coordinates get Gaussian
    noise with the 8 codebooks' error variance on each axis times `scale`, then are decoded
    as codes are: the score an error of that shape and size gives (scale 0: the axes alone).
    Comparing scale 1 with the codes' own score tells whether the error's size per axis,
    not its exact shape, explains what the analyzer loses.
    """
    wavs = [codec._frames(torch.as_tensor(np.asarray(w, np.float32))[None]) for w, _ in clips]
    coords = [codec.coordinates(codec.compress(w), codec.teacher(w))[0] for w in wavs]  # [T, K + S] each
    z, K = torch.cat(coords), codec.config.n_components
    leading = min(leading, K)
    curve = []
    for k in tqdm(range(1, N_CODEBOOKS + 1), desc="codebooks", leave=False):
        first = ResidualVQ(k, CODEBOOK_SIZE, z.shape[1])
        first.codebooks.copy_(codec.quantizer.codebooks[:k])
        variance = (first.decode(first.encode(z, codec.config.beam)) - z).pow(2).mean(0)  # [K + S]
        curve.append({"codebooks": k, "total": float(variance.sum()), "leading": float(variance[:leading].sum()),
                      "trailing": float(variance[leading:K].sum()), "semantic": float(variance[K:].sum())})
    noisy, generator = {}, torch.Generator().manual_seed(0)
    for scale in scales:  # `variance` is now the error variance of all 8 codebooks, per axis
        scores = []
        for (wav, truth), c in zip(tqdm(clips, desc=f"noise x {scale:g}", leave=False), coords):
            vectors = c + torch.randn(c.shape, generator=generator) * (scale * variance).sqrt()
            y = griffin_lim(codec.spectrum(vectors[None]))[0, :len(wav)]
            scores.append(adherence(analyze(y.numpy()), truth)["score"])
        noisy[scale] = float(np.mean(scores))
    return {"curve": curve, "noisy": noisy, "leading_axes": leading}


def print_evaluation(result):
    """evaluate_codec's (or xcodec_train.evaluate_xcodec's) result as the command lines print it."""
    print(f"log-mel distance (reconstruction vs original): {result['log_mel_distance']:.3f}")
    print(f"semantic error (teacher features from the codes, share of their variance): {result['semantic_error']:.3f}")
    for key in result["original"]:
        print(f"{key:>8}: original {100 * result['original'][key]:5.1f}%   "
              f"reconstruction {100 * result['reconstruction'][key]:5.1f}%")


def main():
    p = argparse.ArgumentParser(description="Fit the codec to the toy world, then score it on held-out clips.")
    p.add_argument("--out", default="runs/codec", help="folder for codec.pt")
    p.add_argument("--preset", default="toy", choices=list(CODEC_PRESETS), help="model size")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (samples, restarts)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the toy world")
    p.add_argument("--clips", type=int, default=3000, help="training clips: world indices 0..clips-1")
    p.add_argument("--eval-clips", type=int, default=200, help="held-out clips: indices from 1000000 on")
    p.add_argument("--eval-only", action="store_true", help="score out/codec.pt without fitting")
    p.add_argument("--budget", action="store_true",
                   help="also print the error left after each codebook and the scores of noise of that size (error_budget)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); 1 beside another job, as more than the free cores stalls both")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    if CODEC_PRESETS[args.preset].teacher == "encoder" and not args.eval_only:
        fail(f"the {args.preset} preset's teacher is CLAP's audio tower: run `python train.py --stage clap`, "
             f"then `python train.py --stage codec --codec_preset {args.preset}`")
    if args.eval_only:
        codec = Codec.from_checkpoint(Path(args.out) / "codec.pt")
    else:
        clips = [wav for wav, _ in world_clips(args.world_seed, tqdm(range(args.clips), desc="world"))]
        print(f"synthesised {len(clips)} clips in {time.time() - start:.0f} s")
        codec = train_codec(args.out, clips, args.preset, args.seed)
        print(f"fitted in {time.time() - start:.0f} s (synthesis included) -> {args.out}/codec.pt")
    held_out = world_clips(args.world_seed, range(1_000_000, 1_000_000 + args.eval_clips))
    result = evaluate_codec(codec, held_out)
    print_evaluation(result)
    if args.budget:
        budget = error_budget(codec, held_out)
        print(f"squared error of the coordinates by codebooks used (leading {budget['leading_axes']} axes / "
              "the other acoustic axes / semantic):")
        for row in budget["curve"]:
            print(f"  {row['codebooks']}: {row['total']:.3f} ({row['leading']:.3f} / {row['trailing']:.3f} / {row['semantic']:.3f})")
        for scale, score in budget["noisy"].items():
            print(f"analyzer score with noise of {scale:g} x the 8 codebooks' error variance: {100 * score:.1f}%")


if __name__ == "__main__":
    main()
