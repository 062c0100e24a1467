"""The mouth of UALM: an X-codec-style RVQ codec, 16 kHz audio <-> 8 x 1024 tokens at 50 Hz.

X-codec (Ye et al. 2024, SPEC.md section 2) quantises acoustic and semantic features
together, so the first codebooks carry meaning as well as sound:

    wav [B, N] --STFT (n_fft 1280, hop 320)--> log|X| [B, 641, T] --principal axes--> [B, 256, T]
        --conv stack--> [B, latent, T] ------------------------------------------------------+
    wav --frozen semantic teacher--> [B, 128, T] --conv--> [B, semantic, T] ------------------+
        concat --fuse--> [B, D, T] --RVQ, 8 codebooks of 1024--> codes [B, 8, T]
        --> magnitude decoder (conv stack) --> [B, 256, T] --axes back--> log|X| [B, 641, T]
        --Griffin-Lim--> wav [B, 320 T]
        --> semantic decoder --> [B, 128, T], regressed onto the teacher's features

Where X-codec encodes and decodes the waveform itself (strided convs, then transposed
convs back to 16 kHz), ours works on STFT frames at the code rate: the decoder predicts
each frame's magnitude spectrum and Griffin-Lim recovers a phase for it. The reason is
the budget: on a laptop CPU a waveform decoder does not converge in minutes (our first
version, after 1000 steps, came out 20-40 dB too quiet and the world's analyzer found
20% of the events in it), whereas a 50 Hz magnitude is a direct regression target. The
LM-side interface is unchanged: the same codes at 50 Hz, the same delay pattern.

The teacher in X-codec is a frozen HuBERT. No weights can be downloaded here, so our
stand-in is a fixed, non-learned transform: Whisper's 128-bin log-mel (encoder.py) at
100 Hz, average-pooled to the codec's 50 Hz. It is frozen by construction, which is
the property the architecture relies on.

Losses (codec_losses): L1 of log magnitudes, L1 of log-mels at three mel resolutions,
a spectral shape loss, two losses on the tonal peaks, the RVQ commitment loss and the
semantic reconstruction (MSE); no waveform is made during training. Each term answers a
failure we measured (the README's codec list has the runs):
- shape: the KL divergence between each frame's power spectrum and the predicted one,
  both normalised to sum to 1 over frequency. Its gradient (predicted - true share of the
  frame's power) is large at the loud peaks, which the log-domain terms, ruled by the
  many quiet bins, left blurred and 15-35 dB low.
- peak and slope: L1 of the log magnitude, and of its change from frame to frame, on the
  bins of tonal peaks (peak_mask). Quiet and high partials (a bell's 2.76 and 5.4 x) came
  back 10-40 dB low and smeared over their neighbours, and the codec flattened a note's
  decay into a plateau and sagged a beep's plateau; the world's analyzer tells a beep
  from a decaying partial by exactly that.
MAG_FLOOR, added before the log, sits 70 dB under full scale; with it 90 dB down, the
L1 terms spent themselves on bins far under the events, and the codec scored 5.6 points
lower on held-out clips.

The RVQ (rvq.py) learns its codebooks by k-means and moving averages, not gradients. The
adversarial term of X-codec (and of DAC/EnCodec) is left out: it buys perceptual
crispness after days of GPU training, whereas the toy world is scored by spectral
analysis. The LM sees the tokens through the delay pattern (`delay_pattern`).

The conv stacks do not read or write the 641 bins themselves. Before training,
fit_basis finds the principal axes of the training clips' log-magnitude frames (the top
eigenvectors of their covariance: an initialisation from data, like the codebooks'
k-means); the encoder reads each frame's coordinates on the top 256 axes, each scaled to
unit variance, and the decoder writes coordinates that the same axes map back to 641
bins. Projected onto 256 axes and back, with no codec at all, 100 held-out clips score
97.0% on the analyzer (the originals of 200: 96.2%); reading and writing the bins, the
codec had to find such directions by gradient descent and did not in CPU minutes.

    python codec.py --out runs/codec     # toy preset: 4800 steps, ~11 min on one CPU core, then scores
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
from encoder import log_mel_spectrogram, mel_filters
from rvq import ResidualVQ
from analyzer import adherence, analyze

# ---------------------------------------------------------------------------------------
# Constants (X-codec's; model.py's N_STREAMS and CODEBOOK_SIZE must equal these)

SAMPLE_RATE = 16000
HOP = 320  # samples per frame (X-codec's encoder strides 8 * 5 * 4 * 2)
FRAME_RATE = SAMPLE_RATE // HOP  # 50 Hz
N_CODEBOOKS = 8  # 8 x 10 bits x 50 Hz = 4 kbps
CODEBOOK_SIZE = 1024
TEACHER_DIM = 128  # log-mel bins of the stand-in semantic teacher
N_FFT = 1280  # 80 ms frames, 4 x HOP: 12.5 Hz bins resolve the 100..200 Hz hums
N_BINS = N_FFT // 2 + 1  # 641 magnitudes per frame, what the decoder predicts
MAG_FLOOR = 0.1  # added to |STFT| before the log: 70 dB under a full-scale sine's peak (320); a codec is trained for one
PEAK_CONTRAST, PEAK_WIDTH = 2.0, 7  # nepers over the 17 bins around a tonal peak; bins of the mask per peak
GL_ITERS = 32  # Griffin-Lim iterations in decode
TRAIN_STEPS = 4800  # optimizer steps of the toy preset (train_codec, the CLI, train.py --codec_steps)
MEL_BANDS = (160, 80, 40)  # mel resolutions of the training loss on the predicted magnitude
# (n_fft, n_mels) of the waveform losses; hop n_fft / 4. 2048 resolves the 150 Hz hums, 256 the clicks
RESOLUTIONS = ((2048, 128), (1024, 80), (512, 64), (256, 32))
LOG_FLOOR = 1e-2  # added to |STFT| and mels before the log in the waveform losses (see spectral_losses)


@dataclass
class CodecConfig:
    channels: int = 192  # width of the encoder and decoder conv stacks
    n_components: int = 256  # principal components of the log-magnitude frames the conv stacks read and write
    n_blocks: int = 4  # residual blocks in each stack
    latent_dim: int = 64  # acoustic latent per frame
    semantic_dim: int = 32  # projected teacher features, concatenated to the latent
    code_dim: int = 64  # RVQ vector width
    ema_decay: float = 0.99  # codebook moving average
    # a code with fewer (EMA) assignments per batch restarts; a batch of 8 x 50 frames gives
    # 400 / 1024 = 0.4 per code on average, so this is 1/8 of the average use
    dead_threshold: float = 0.05
    magnitude_weight: float = 1.0
    mel_weight: float = 1.0
    commit_weight: float = 0.25
    semantic_weight: float = 1.0
    shape_weight: float = 1.0
    peak_weight: float = 1.0  # L1 of log magnitudes on the tonal peaks (peak_mask)
    slope_weight: float = 10.0  # L1 of their change from frame to frame


CODEC_PRESETS = {
    "toy": CodecConfig(),
    "micro": CodecConfig(channels=16, n_blocks=1, latent_dim=8, semantic_dim=4, code_dim=8, n_components=32),
}


# ---------------------------------------------------------------------------------------
# The delay pattern (MusicGen's, as the UALM release uses it)


def delay_pattern(codes: torch.Tensor, pad: int = -1) -> torch.Tensor:
    """Shift codebook k right by k steps: codes [B, K, T] -> [B, K, T + K - 1].

    At step s the LM predicts {c1[s], c2[s-1], ..., cK[s-K+1]}, so each frame's coarse
    codes are known before its fine ones. Empty cells hold `pad` (-1: that codebook's
    pad, which model.UALMConfig.audio_ids maps to index 0 of its interval). For K = 3,
    T = 4, with S = pad:

        [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]  ->  [[1, 2, 3, 4, S, S],
                                                         [S, 1, 2, 3, 4, S],
                                                         [S, S, 1, 2, 3, 4]]
    """
    B, K, T = codes.shape
    out = codes.new_full((B, K, T + K - 1), pad)
    for k in range(K):
        out[:, k, k:k + T] = codes[:, k]
    return out


def undelay_pattern(delayed: torch.Tensor) -> torch.Tensor:
    """The exact inverse: delayed [B, K, T + K - 1] -> codes [B, K, T], row k = delayed[:, k, k:k+T].

    e.g. [[1, 2, 3, 4, S, S], [S, 1, 2, 3, 4, S], [S, S, 1, 2, 3, 4]] -> [[1, 2, 3, 4]] * 3.
    """
    B, K, S = delayed.shape
    T = S - (K - 1)
    return torch.stack([delayed[:, k, k:k + T] for k in range(K)], dim=1)


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


def log_magnitude(mag: torch.Tensor) -> torch.Tensor:
    """|STFT| -> log(|STFT| + MAG_FLOOR), the codec's target: 0 -> -2.3, a full-scale sine's peak (320) -> 5.8."""
    return (mag + MAG_FLOOR).log()


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
# Building blocks: 1-D convs over the 50 Hz frames


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha (DAC): a periodic activation, well suited to tonal audio."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x):
        return x + (self.alpha * x).sin().pow(2) / (self.alpha + 1e-9)


class ResidualBlock(nn.Module):
    """x + conv1x1(snake(conv3_dilated(snake(norm(x))))); [B, C, T] -> [B, C, T].

    GroupNorm(1, C) normalises each frame sequence over channels and time (a LayerNorm
    that fits conv layouts); dilation widens the context: 1, 2, 4 frames = 20..80 ms.
    """

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(1, channels), Snake(channels),
                                   nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation),
                                   Snake(channels), nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        return x + self.block(x)


def conv_stack(c_in: int, channels: int, c_out: int, n_blocks: int) -> nn.Sequential:
    """[B, c_in, T] -> [B, c_out, T]: conv k3 in, residual blocks (dilations 1, 2, 4, 1, ...), conv k3 out.

    No norm on the way out: a norm there (over channels and time) divides away each
    clip's level and contrast, and the decoder then cannot say how loud a tone is (the
    first toy runs came out 20-50 dB too quiet). Inside the blocks the norm only feeds
    the residual branch, so the stream itself keeps the level."""
    return nn.Sequential(nn.Conv1d(c_in, channels, 3, padding=1),
                         *[ResidualBlock(channels, 2 ** (i % 3)) for i in range(n_blocks)],
                         Snake(channels), nn.Conv1d(channels, c_out, 3, padding=1))


# ---------------------------------------------------------------------------------------
# The codec


class Codec(nn.Module):
    """encode: wav [B, N] -> codes [B, 8, N / 320]; decode: codes -> wav; forward: all the losses need."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        cfg = self.config = config
        # the frames' principal axes (fit_basis sets them from data; until then: the first bins)
        self.register_buffer("mean", torch.zeros(N_BINS))  # mean log-magnitude frame [641]
        self.register_buffer("basis", torch.eye(N_BINS)[:cfg.n_components])  # orthonormal rows [K, 641]
        self.register_buffer("scale", torch.ones(cfg.n_components))  # standard deviation along each [K]
        self.encoder = conv_stack(cfg.n_components, cfg.channels, cfg.latent_dim, cfg.n_blocks)
        self.semantic_encoder = nn.Sequential(nn.Conv1d(TEACHER_DIM, cfg.semantic_dim, 3, padding=1), nn.ELU(),
                                              nn.Conv1d(cfg.semantic_dim, cfg.semantic_dim, 3, padding=1))
        self.fuse = nn.Conv1d(cfg.latent_dim + cfg.semantic_dim, cfg.code_dim, 1)  # X-codec's fc_prior
        self.quantizer = ResidualVQ(N_CODEBOOKS, CODEBOOK_SIZE, cfg.code_dim, cfg.ema_decay, cfg.dead_threshold)
        self.to_acoustic = nn.Conv1d(cfg.code_dim, cfg.latent_dim, 1)  # X-codec's fc_post_a
        self.to_semantic = nn.Conv1d(cfg.code_dim, cfg.semantic_dim, 1)  # fc_post_s
        self.decoder = conv_stack(cfg.latent_dim, cfg.channels, cfg.n_components, cfg.n_blocks)  # -> coordinates
        self.semantic_decoder = nn.Sequential(nn.Conv1d(cfg.semantic_dim, cfg.semantic_dim, 3, padding=1), nn.ELU(),
                                              nn.Conv1d(cfg.semantic_dim, TEACHER_DIM, 3, padding=1))

    @staticmethod
    def _frames(wav: torch.Tensor) -> torch.Tensor:
        """[B, N] or [B, 1, N] -> [B, N'] zero-padded on the right to a multiple of 320 samples."""
        wav = wav.reshape(wav.shape[0], -1).float()
        return F.pad(wav, (0, -wav.shape[-1] % HOP))

    @torch.no_grad()
    def fit_basis(self, log_mags: torch.Tensor):
        """Principal axes of training frames, log_mags [N, 641] (N >= n_components): the mean
        frame, the top n_components eigenvectors of their covariance, and the spread along each."""
        mean = log_mags.double().mean(0)
        x = log_mags - mean.float()
        variance, vectors = torch.linalg.eigh((x.T @ x).double() / (len(x) - 1))  # ascending
        top = variance.argsort(descending=True)[:self.config.n_components]
        self.mean.copy_(mean)
        self.basis.copy_(vectors[:, top].T)
        self.scale.copy_(variance[top].clamp(min=1e-6 * variance.max()).sqrt())  # no axis scaled up 1000x

    def to_coordinates(self, log_mag: torch.Tensor) -> torch.Tensor:
        """log|STFT| [B, 641, T] -> its coordinates on the principal axes [B, K, T], each of unit variance."""
        return torch.einsum("kf,bft->bkt", self.basis, log_mag - self.mean[:, None]) / self.scale[:, None]

    def from_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """The inverse map back to log|STFT| [B, 641, T] (exact within the K axes' span)."""
        return torch.einsum("kf,bkt->bft", self.basis, coordinates * self.scale[:, None]) + self.mean[:, None]

    def latent(self, wav: torch.Tensor):
        """wav [B, 320 T] -> (fused latent [B, D, T], teacher features [B, 128, T], log|STFT| [B, 641, T])."""
        teacher = teacher_features(wav)
        target = log_magnitude(stft_frames(wav).abs())  # [B, 641, T], in about [-5, 6]
        acoustic = self.encoder(self.to_coordinates(target))  # [B, latent_dim, T]
        semantic = self.semantic_encoder(teacher)  # [B, semantic_dim, T]
        return self.fuse(torch.cat([acoustic, semantic], 1)), teacher, target

    def log_magnitude(self, q: torch.Tensor) -> torch.Tensor:
        """Quantised latent [B, D, T] -> predicted log|STFT| [B, 641, T]."""
        return self.from_coordinates(self.decoder(self.to_acoustic(q)))

    def forward(self, wav: torch.Tensor) -> dict:
        """wav [B, N] -> predicted and target log-magnitudes and teacher features, codes, commitment loss."""
        z, teacher, target = self.latent(self._frames(wav))
        q, codes, commit = self.quantizer(z)
        return {"log_mag": self.log_magnitude(q), "target": target, "codes": codes, "commit": commit,
                "semantic": self.semantic_decoder(self.to_semantic(q)), "teacher": teacher}

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, N] or [B, 1, N] at 16 kHz -> codes [B, 8, ceil(N / 320)] int64 in 0..1023.

        e.g. 1 s of audio, [1, 16000] -> [1, 8, 50].
        """
        z, _, _ = self.latent(self._frames(wav))
        B, D, T = z.shape
        residual, codes = z.transpose(1, 2).reshape(B * T, D), []
        for vq in self.quantizer.layers:
            idx = vq.nearest(residual)
            residual = residual - vq.codebook[idx]
            codes.append(idx.view(B, T))
        return torch.stack(codes, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, 8, T] -> wav [B, 320 T] at 16 kHz: predicted magnitudes, phase by Griffin-Lim. [1, 8, 50] -> [1, 16000]."""
        if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
            raise ValueError("codes hold pad (-1) or out-of-range values; undelay_pattern and strip pads "
                             "before decoding.")
        log_mag = self.log_magnitude(self.quantizer.decode(codes))  # [B, 641, T]
        return griffin_lim((log_mag.exp() - MAG_FLOOR).clamp(min=0))

    @classmethod
    def from_checkpoint(cls, path, config: CodecConfig | None = None) -> "Codec":
        """Load a codec saved by save_checkpoint; with `config`, also check it equals the saved one."""
        return load_module(cls, CodecConfig, path, config, "codec", "python codec.py --out DIR")


# ---------------------------------------------------------------------------------------
# Losses


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
    whole round trip (Griffin-Lim included). Training does not use it: codec_losses
    compares magnitudes directly. LOG_FLOOR is added before the log, not clamped: under a
    clamp a bin left silent gets no gradient however loud its target.
    """
    stft = mel = 0.0
    for n_fft, n_mels in RESOLUTIONS:
        p, t = magnitude(pred, n_fft), magnitude(target, n_fft)
        convergence = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=LOG_FLOOR)
        stft = stft + convergence + F.l1_loss((p + LOG_FLOOR).log(), (t + LOG_FLOOR).log())
        mel = mel + F.l1_loss(log_mel(p, n_mels), log_mel(t, n_mels))
    return {"stft": stft / len(RESOLUTIONS), "mel": mel / len(RESOLUTIONS)}


def peak_mask(log_mag: torch.Tensor) -> torch.Tensor:
    """Where the tonal peaks are: log|STFT| [B, 641, T] -> 0/1 mask [B, 641, T].

    A bin is a peak when it stands PEAK_CONTRAST nepers (17 dB) over the mean of the 17
    bins around it (+-100 Hz); the mask takes in PEAK_WIDTH bins around it, the peak's
    skirts. Noise does not pass: a noise bin's log magnitude exceeds its neighbours' mean
    by 2 nepers with a probability of about e^-30, where a steady beep stands 4-5 over it.
    """
    local = F.avg_pool1d(log_mag.transpose(1, 2), 17, 1, 8, count_include_pad=False).transpose(1, 2)
    peaks = (log_mag - local > PEAK_CONTRAST).float()
    return F.max_pool1d(peaks.transpose(1, 2), PEAK_WIDTH, 1, PEAK_WIDTH // 2).transpose(1, 2)


def codec_losses(codec: Codec, wav: torch.Tensor) -> dict:
    """wav [B, N] -> {'loss': weighted total, and each term}; no waveform is synthesised (no Griffin-Lim here).

    magnitude = L1 of the predicted vs true log(|STFT| + MAG_FLOOR), the decoder's direct
    target, plus spectral convergence ||t - p|| / ||t|| of the linear magnitudes; mel = L1
    of log10 mels of the predicted vs true magnitude, mean over MEL_BANDS; shape, peak and
    slope as the module docstring says. The log terms alone are ruled by the many quiet
    bins (our first run left a tone's peak 20-30 dB low); spectral convergence and shape
    by the loud ones, peak and slope by the tonal ones, loud or quiet.
    """
    cfg, out = codec.config, codec(wav)
    pred, target = out["log_mag"], out["target"]
    pred_mag, target_mag = (pred.exp() - MAG_FLOOR).clamp(min=0), (target.exp() - MAG_FLOOR).clamp(min=0)
    mel = sum(F.l1_loss(log_mel(pred_mag, n), log_mel(target_mag, n)) for n in MEL_BANDS) / len(MEL_BANDS)
    convergence = torch.linalg.norm(target_mag - pred_mag) / torch.linalg.norm(target_mag).clamp(min=MAG_FLOOR)
    power = F.softmax(2 * target, 1)  # each frame's power |X|^2 over frequency, as a distribution
    shape = (power * (power.clamp(min=1e-12).log() - F.log_softmax(2 * pred, 1))).sum(1).mean()
    mask = peak_mask(target)
    both = mask[..., 1:] * mask[..., :-1]  # a peak in this frame and the next
    masked_l1 = lambda a, b, m: ((a - b).abs() * m).sum() / m.sum().clamp(min=1)
    terms = {"magnitude": F.l1_loss(pred, target) + convergence, "mel": mel, "shape": shape,
             "peak": masked_l1(pred, target, mask), "slope": masked_l1(pred.diff(dim=-1), target.diff(dim=-1), both),
             "commit": out["commit"], "semantic": F.mse_loss(out["semantic"], out["teacher"])}
    terms["loss"] = (cfg.magnitude_weight * terms["magnitude"] + cfg.mel_weight * terms["mel"]
                     + cfg.shape_weight * terms["shape"] + cfg.commit_weight * terms["commit"]
                     + cfg.semantic_weight * terms["semantic"] + cfg.peak_weight * terms["peak"]
                     + cfg.slope_weight * terms["slope"])
    return terms


# ---------------------------------------------------------------------------------------
# Training and evaluation


def world_clips(seed: int, indices) -> list:
    """Toy-world clips (data.py): (0, range(2)) -> [(16 kHz mono float32 (N,), ground-truth events), ...]."""
    examples = (data.make_example(seed, i) for i in indices)
    return [(ex["audio"], ex["plan"]["events"]) for ex in examples]


def random_crops(clips: list, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of random windows: (clips, 8, 16000, g) -> [8, 16000]; short clips are zero-padded."""
    batch = torch.zeros(batch_size, length)
    for b, i in enumerate(torch.randint(len(clips), (batch_size,), generator=generator).tolist()):
        clip = clips[i]
        start = int(torch.randint(max(1, len(clip) - length + 1), (1,), generator=generator))
        window = clip[start:start + length]
        batch[b, :len(window)] = window
    return batch


def learning_rate(step: int, steps: int, peak: float, warmup: int = 20) -> float:
    """Linear warm-up, then cosine decay to 10% of peak: (step 20 of 600, 1e-3) -> 1e-3."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_codec(out_dir, clips: list, config: CodecConfig | str = "toy", steps: int = TRAIN_STEPS, batch_size: int = 8,
                crop_seconds: float = 1.0, lr: float = 1e-3, seed: int = 0, save_every: int = 200,
                progress: bool = True) -> Codec:
    """Train a codec on 16 kHz mono clips [(N,) arrays]; writes out_dir/codec.pt every save_every steps.

    First the principal axes of all the clips' frames (fit_basis), then AdamW on random crops;
    the codebooks learn by k-means + EMA inside the forward pass.
    Deterministic from `seed` (model init, crops, codebook restarts).
    """
    torch.manual_seed(seed)
    config = CODEC_PRESETS[config] if isinstance(config, str) else config
    codec = Codec(config).train()
    clips = [torch.as_tensor(np.asarray(c, np.float32)) for c in clips]
    codec.fit_basis(torch.cat([log_magnitude(stft_frames(Codec._frames(c[None])).abs())[0].T for c in clips]))
    opt = torch.optim.AdamW(codec.parameters(), lr=lr, betas=(0.8, 0.99))  # DAC's betas
    generator = torch.Generator().manual_seed(seed)
    length = int(crop_seconds * SAMPLE_RATE) // HOP * HOP
    bar = tqdm(range(steps), desc="codec", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        terms = codec_losses(codec, random_crops(clips, batch_size, length, generator))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items()})
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_checkpoint(Path(out_dir) / "codec.pt", codec, step + 1)
    return codec.eval()


@torch.no_grad()
def evaluate_codec(codec: Codec, clips: list) -> dict:
    """Reconstruct each (wav, true events) clip and score it: -> {'log_mel_distance', 'original', 'reconstruction'}.

    log_mel_distance: the multi-resolution log10-mel L1 (spectral_losses' 'mel') of
    reconstruction vs original, mean over clips. 'original' / 'reconstruction': how often
    world.analyze recovers the true events / layout (order) / counts / pitch, and their
    mean 'score', from the original and from the codec's reconstruction (fractions).
    """
    codec.eval()
    distances, scores = [], {"original": [], "reconstruction": []}
    for wav, truth in clips:
        x = torch.as_tensor(np.asarray(wav, np.float32))[None]  # [1, N]
        y = codec.decode(codec.encode(x))[:, :x.shape[-1]]  # [1, N]
        distances.append(float(spectral_losses(y, x)["mel"]))
        scores["original"].append(adherence(analyze(x[0].numpy()), truth))
        scores["reconstruction"].append(adherence(analyze(y[0].numpy()), truth))
    mean = {name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for name, rows in scores.items()}
    return {"log_mel_distance": float(np.mean(distances)), **mean}


def main():
    p = argparse.ArgumentParser(description="Train the codec on the toy world, then score it on held-out clips.")
    p.add_argument("--out", default="runs/codec", help="folder for codec.pt")
    p.add_argument("--preset", default="toy", choices=list(CODEC_PRESETS), help="model size")
    p.add_argument("--steps", type=int, default=TRAIN_STEPS, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="crops per step")
    p.add_argument("--crop", type=float, default=1.0, help="seconds per crop")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="training seed (init, crops, restarts)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the toy world")
    p.add_argument("--clips", type=int, default=300, help="training clips: world indices 0..clips-1")
    p.add_argument("--eval-clips", type=int, default=200, help="held-out clips: indices from 1000000 on")
    p.add_argument("--eval-only", action="store_true", help="score out/codec.pt without training")
    p.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores stalls)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    if args.eval_only:
        codec = Codec.from_checkpoint(Path(args.out) / "codec.pt")
    else:
        clips = [wav for wav, _ in world_clips(args.world_seed, range(args.clips))]
        print(f"synthesised {len(clips)} clips in {time.time() - start:.0f} s")
        codec = train_codec(args.out, clips, args.preset, args.steps, args.batch_size, args.crop, args.lr, args.seed)
        print(f"trained in {time.time() - start:.0f} s (synthesis included)")
    held_out = world_clips(args.world_seed, range(1_000_000, 1_000_000 + args.eval_clips))
    result = evaluate_codec(codec, held_out)
    print(f"log-mel distance (reconstruction vs original): {result['log_mel_distance']:.3f}")
    for key in result["original"]:
        print(f"{key:>8}: original {100 * result['original'][key]:5.1f}%   "
              f"reconstruction {100 * result['reconstruction'][key]:5.1f}%")


if __name__ == "__main__":
    main()
