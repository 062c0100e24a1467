"""The enhancement VAE that post-processes UALM's audio (paper; SPEC.md section 4): the
codec's 16 kHz mono output -> 48 kHz stereo.

UALM's LM speaks X-codec tokens, whose audio is 16 kHz mono with codec artefacts. The
paper post-processes it with a VAE trained on pairs (codec round trip of clean audio ->
clean 48 kHz stereo) that jointly restores, adds the band above 8 kHz and spatialises
(SPEC.md section 4). The authors release no code for it; the design below is ours (choice):

    mono16k [B, N] --log10 |STFT| (hop 64)--> [B, 129, T] --conv encoder--> mean, logvar [B, Z, T]
        z = mean + exp(logvar / 2) * noise while training;  z = mean at inference
    baseline = band-limited 3x upsampling of mono16k (data.resample)             [B, 3N]
    z --conv decoder--> per frame and 48 kHz bin, for mid and side: a gain and a noise level
    residual spectrum = gain * STFT(baseline) + e^level * e^(i random phase)    [B, 2, 385, T]
        --inverse STFT at 48 kHz (hop 192 = 3 x 64)--> residual [B, 2, 3N]
    mid = baseline + residual[:, 0];   side = residual[:, 1]
    stereo48k = [mid + side, mid - side]                                           [B, 2, 3N]

The residual path makes an untrained VAE close to the naive baseline (the mono input,
upsampled, on both channels), so the network only learns what 16 kHz mono lacks. The gain
term reshapes what is there (restoration: levels and spectral tilt the codec got wrong);
the noise term is a DDSP-style filtered-noise synthesiser (Engel et al. 2020) for what is
not: hiss and click tails above 8 kHz, and the room's decorrelated tails in the side
channel. Noise needs no learned phase, which magnitude losses teach poorly and slowly; at
inference its phases come from a fixed seed, so forward() is deterministic. The decoder
emits STFT frames and one inverse STFT makes the waveform (as in Vocos): on a CPU that is
far cheaper than stacks of transposed convolutions up to 48 kHz.

Losses: multi-resolution STFT (spectral convergence + log magnitude) on left, right, mid
and side, so both the channel spectra and the stereo image are matched; multi-scale log10
mel L1 at 48 kHz on left and right (also the evaluation's distance); a small KL of the
posterior to N(0, I). The paper adds an adversarial loss with feature matching; we leave
it out. What the VAE must invent here is noise (hiss and click tails above 8 kHz, the
room's decorrelated tails) whose waveform no model can predict from the input, only its
spectral envelope, and the spectral losses fit that envelope directly. A discriminator
buys phase-coherent crispness after long GPU training, would roughly double the cost of
a step, and the toy world's scores (spectra, energy above 8 kHz, correlation) do not
measure what it adds.

    python vae.py --out runs/vae                      # toy preset (minutes on a CPU), then scores
    python vae.py --out runs/vae --codec runs/codec/codec.pt     # train on codec round trips
"""

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import load_module, save_checkpoint
from codec import Codec, magnitude, mel_bank
from data import make_example, resample
from utils import learning_rate
from toy.world import LM_SR, MASTER_SR

# ---------------------------------------------------------------------------------------
# Constants

UPSAMPLE = MASTER_SR // LM_SR  # 3: 16 kHz -> 48 kHz
HOP = 64  # 16 kHz samples per latent frame: 4 ms, 250 frames per second
HOP_48K = HOP * UPSAMPLE  # 192: the same frame at 48 kHz
N_FFT = 4 * HOP  # 256: encoder analysis window (16 ms), 129 bins
N_FFT_48K = 4 * HOP_48K  # 768: decoder synthesis window (16 ms)
BINS_48K = N_FFT_48K // 2 + 1  # 385 bins per residual spectrum
RESOLUTIONS = ((2048, 128), (1024, 64), (512, 32), (256, 16))  # 48 kHz (n_fft, n_mels): 43..5 ms windows
LOG_FLOOR = 1e-5  # |STFT| and mel floor before log (-100 dB): low, so the quiet band above 8 kHz counts
HIGH_BAND_HZ = LM_SR // 2  # 8 kHz: the Nyquist of 16 kHz audio, above which only the VAE adds content
INIT_LOG_MAGNITUDE = -12.0  # residual spectra start at e^-12 (~ -100 dB): the VAE starts as the baseline
MAX_LOG_MAGNITUDE = 6.0  # clamp before exp, so an early bad step cannot overflow
NOISE_SEED = 0  # seed of the noise phases at inference, so forward() is deterministic
HELD_OUT = 1_000_000  # world indices from here on are never trained on (codec.py's convention)


@dataclass
class VAEConfig:
    channels: int = 96  # conv width of encoder and decoder
    latent_dim: int = 16  # Z, latent channels per 4 ms frame
    n_blocks: int = 4  # residual blocks per side, dilations 1, 3, 9, 27: each side sees +-170 ms
    kl_weight: float = 1e-3  # "small KL": keeps the latent near N(0, I) without blurring it
    stft_weight: float = 1.0
    mel_weight: float = 1.0
    steps: int = 300  # optimizer steps of train_vae: short, as the residual path starts at the baseline
    batch_size: int = 8  # crops per step
    crop_seconds: float = 0.5  # seconds per crop: longer than the room's 0.3 s tails
    lr: float = 5e-3  # peak AdamW learning rate: high, since log magnitudes must travel ~10 nepers
    n_clips: int = 120  # training clips: world indices 0..n_clips-1


VAE_PRESETS = {
    "toy": VAEConfig(),
    "micro": VAEConfig(channels=16, latent_dim=4, n_blocks=1, steps=40, batch_size=2, crop_seconds=0.25, n_clips=2),
}


# ---------------------------------------------------------------------------------------
# Signal helpers


def upsample(mono16k: torch.Tensor) -> torch.Tensor:
    """Band-limited 3x upsampling (data.resample's windowed sinc): [B, N] at 16 kHz -> [B, 3N] at 48 kHz.

    Its cutoff is 0.94 x 8 kHz, so e.g. a 1 kHz sine of amplitude 0.5 comes out a 1 kHz sine
    of amplitude 0.5 with nothing above 8 kHz. This is the naive baseline the VAE improves on.
    """
    up = resample(mono16k.detach().cpu().numpy(), LM_SR, MASTER_SR)
    return torch.from_numpy(up).to(mono16k.device)


def log_mel(mag: torch.Tensor, n_mels: int) -> torch.Tensor:
    """|STFT| at 48 kHz [..., F, frames] -> log10 mel magnitudes [..., n_mels, frames]."""
    n_fft = 2 * (mag.shape[-2] - 1)
    return (mel_bank(n_fft, n_mels, MASTER_SR).to(mag.device) @ mag).clamp(min=LOG_FLOOR).log10()


def mel_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution log10-mel L1 at 48 kHz, mean over RESOLUTIONS and channels: [B, 2, N] x 2 -> scalar.

    e.g. mel_distance(x, x) == 0; doubling a signal everywhere gives ~log10(2) = 0.30.
    """
    return stereo_spectral_losses(pred, target)["mel"]


def high_band_fraction(stereo: torch.Tensor) -> float:
    """Share of the energy above 8 kHz, both channels together: [2, N] at 48 kHz -> float.

    e.g. white noise at 48 kHz -> ~(24 - 8) / 24 = 0.67; anything upsampled from 16 kHz -> ~0.
    """
    power = torch.fft.rfft(stereo.double()).abs().square().sum(0)  # [N // 2 + 1]
    hz = torch.fft.rfftfreq(stereo.shape[-1], 1 / MASTER_SR)
    return float(power[hz > HIGH_BAND_HZ].sum() / power.sum().clamp(min=1e-20))


def channel_correlation(stereo: torch.Tensor) -> float:
    """Pearson correlation of left and right: [2, N] -> float in [-1, 1]; identical channels give 1."""
    left, right = stereo.double() - stereo.double().mean(-1, keepdim=True)
    return float((left * right).sum() / (left.norm() * right.norm()).clamp(min=1e-20))


# ---------------------------------------------------------------------------------------
# The model


class ResBlock(nn.Module):
    """x + conv1x1(GELU(dilated conv3(GELU(x)))) over frames: [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        return x + self.proj(F.gelu(self.conv(F.gelu(x))))


def conv_stack(c_in: int, channels: int, n_blocks: int) -> nn.Sequential:
    """Conv7 to `channels`, then residual blocks with dilations 1, 3, 9, 27, 1, ...: [B, c_in, T] -> [B, C, T]."""
    blocks = [ResBlock(channels, 3 ** (i % 4)) for i in range(n_blocks)]
    return nn.Sequential(nn.Conv1d(c_in, channels, 7, padding=3), *blocks, nn.GELU())


class EnhanceVAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        cfg = self.config = config
        self.encoder = conv_stack(N_FFT // 2 + 1, cfg.channels, cfg.n_blocks)
        self.posterior = nn.Conv1d(cfg.channels, 2 * cfg.latent_dim, 1)  # mean and log-variance
        self.decoder = conv_stack(cfg.latent_dim, cfg.channels, cfg.n_blocks)
        self.head = nn.Conv1d(cfg.channels, 2 * 2 * BINS_48K, 1)  # (mid, side) x (gain, noise log magnitude)
        with torch.no_grad():  # start near the baseline: small gains, near-silent noise
            self.head.weight.mul_(0.1)
            self.head.bias.view(2, 2, BINS_48K)[:, 0] = 0.0
            self.head.bias.view(2, 2, BINS_48K)[:, 1] = INIT_LOG_MAGNITUDE

    def encode(self, mono16k: torch.Tensor):
        """mono16k [B, N] -> posterior mean, logvar, each [B, Z, N // 64 + 1]."""
        features = magnitude(mono16k, N_FFT).clamp(min=LOG_FLOOR).log10()  # [B, 129, T], hop N_FFT / 4 = HOP
        return self.posterior(self.encoder(features)).chunk(2, dim=1)

    def decode(self, z: torch.Tensor, mono16k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Latent [B, Z, T] and the input [B, N] it came from -> stereo48k [B, 2, 3N].

        Mid and side residuals are each gain x baseline spectrum + shaped noise (random phases
        drawn from `generator`), turned into waveforms by one inverse STFT.
        """
        B, N = mono16k.shape
        window = torch.hann_window(N_FFT_48K, device=z.device)
        baseline = upsample(mono16k)  # [B, 3N]
        spec = torch.stft(baseline, N_FFT_48K, HOP_48K, window=window, return_complex=True)  # [B, F, T]
        gain, log_noise = self.head(self.decoder(z)).view(B, 2, 2, BINS_48K, -1).unbind(2)  # each [B, 2, F, T]
        phase = 2 * torch.pi * torch.rand(log_noise.shape, generator=generator, device=z.device)
        noise = torch.polar(log_noise.clamp(max=MAX_LOG_MAGNITUDE).exp(), phase)
        residual = torch.istft((gain * spec[:, None] + noise).flatten(0, 1), N_FFT_48K, HOP_48K, window=window,
                               length=UPSAMPLE * N).view(B, 2, UPSAMPLE * N)  # [B, 2, 3N]: mid, side
        mid, side = baseline + residual[:, 0], residual[:, 1]
        return torch.stack([mid + side, mid - side], 1)

    def forward(self, mono16k: torch.Tensor) -> torch.Tensor:
        """Enhance at inference: mono16k [B, N] -> stereo48k [B, 2, 3N]; e.g. [1, 16000] -> [1, 2, 48000].

        Deterministic: the posterior mean as latent, the noise phases from a fixed seed.
        """
        if mono16k.dim() != 2:
            raise ValueError(f"expected 16 kHz mono as [batch, samples], got shape {tuple(mono16k.shape)}; "
                             "add a batch axis or downmix first.")
        mean, _ = self.encode(mono16k)
        return self.decode(mean, mono16k, torch.Generator(mono16k.device).manual_seed(NOISE_SEED))

    def sample(self, mono16k: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass, reparameterised: mono16k [B, N] -> (stereo48k [B, 2, 3N], mean, logvar)."""
        generator = generator or torch.Generator(mono16k.device).manual_seed(NOISE_SEED)
        mean, logvar = self.encode(mono16k)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return self.decode(mean + (0.5 * logvar).exp() * noise, mono16k, generator), mean, logvar

    @classmethod
    def from_checkpoint(cls, path, config: VAEConfig | None = None) -> "EnhanceVAE":
        """Load a VAE saved by save_checkpoint; with `config`, also check it equals the saved one."""
        return load_module(cls, VAEConfig, path, "python vae.py --out DIR", config)


# ---------------------------------------------------------------------------------------
# Losses


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) || N(0, 1)), mean per latent element: [B, Z, T] x 2 -> scalar.

    0.5 (mean^2 + e^logvar - 1 - logvar): zero for mean 0, logvar 0; 0.5 for mean 1, logvar 0.
    """
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()


def stereo_spectral_losses(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Stereo multi-resolution STFT and log-mel losses: stereo [B, 2, N] x 2 -> {'stft', 'mel'}, means over RESOLUTIONS.

    stft: spectral convergence + log-magnitude L1 on each of left, right, mid and side;
    mel: log10-mel L1 on left and right. The STFT is linear, so the mid and side spectra
    are (L +- R) / 2 of the channel spectra: one STFT per signal and resolution serves all.
    """
    stft = mel = 0.0
    for n_fft, n_mels in RESOLUTIONS:
        window = torch.hann_window(n_fft, device=pred.device)
        p, t = (torch.stft(x.flatten(0, 1), n_fft, n_fft // 4, window=window, return_complex=True)
                .unflatten(0, x.shape[:2]) for x in (pred, target))  # [B, 2, F, frames] complex
        p, t = (torch.cat([s, torch.stack([s[:, 0] + s[:, 1], s[:, 0] - s[:, 1]], 1) / 2], 1).abs()
                for s in (p, t))  # [B, 4, F, frames]: |left|, |right|, |mid|, |side|
        convergence = torch.linalg.vector_norm(t - p, dim=(0, 2, 3)) / torch.linalg.vector_norm(t, dim=(0, 2, 3)).clamp(min=LOG_FLOOR)  # [4]
        stft = stft + convergence.mean() + F.l1_loss(p.clamp(min=LOG_FLOOR).log(), t.clamp(min=LOG_FLOOR).log())
        mel = mel + F.l1_loss(log_mel(p[:, :2], n_mels), log_mel(t[:, :2], n_mels))
    return {"stft": stft / len(RESOLUTIONS), "mel": mel / len(RESOLUTIONS)}


def vae_losses(vae: EnhanceVAE, mono16k: torch.Tensor, master: torch.Tensor, generator=None) -> dict:
    """mono16k [B, N], master [B, 2, 3N] -> {'loss': weighted total, 'stft', 'mel', 'kl'}."""
    cfg = vae.config
    pred, mean, logvar = vae.sample(mono16k, generator)
    terms = {**stereo_spectral_losses(pred, master), "kl": kl_divergence(mean, logvar)}
    terms["loss"] = cfg.stft_weight * terms["stft"] + cfg.mel_weight * terms["mel"] + cfg.kl_weight * terms["kl"]
    return terms


# ---------------------------------------------------------------------------------------
# Data: (16 kHz mono, 48 kHz stereo master) pairs


def world_pairs(seed: int, indices) -> list:
    """Toy-world pairs (data.py): (0, range(2)) -> [(mono (N,), master (2, 3N)), ...] float32.

    The master is zero-padded to exactly 3x the mono length (the downmix rounds up).
    """
    pairs = []
    for i in indices:
        ex = make_example(seed, i)
        mono, master = ex["audio"], ex["master"]
        pairs.append((mono, np.pad(master, ((0, 0), (0, UPSAMPLE * len(mono) - master.shape[-1])))))
    return pairs


@torch.no_grad()
def round_trip(codec: Codec, mono: np.ndarray) -> np.ndarray:
    """What the LM's audio sounds like: (N,) 16 kHz -> codec.decode(codec.encode(.)), trimmed to (N,)."""
    x = torch.as_tensor(np.asarray(mono, np.float32))[None]
    return codec.decode(codec.encode(x))[0, :len(mono)].numpy()


def random_crops(pairs: list, batch_size: int, length: int, generator: torch.Generator):
    """Aligned random windows: (pairs, 8, 16000, g) -> mono [8, 16000], master [8, 2, 48000]; zero-padded."""
    mono, master = torch.zeros(batch_size, length), torch.zeros(batch_size, 2, UPSAMPLE * length)
    for b, i in enumerate(torch.randint(len(pairs), (batch_size,), generator=generator).tolist()):
        x, y = pairs[i]
        start = int(torch.randint(max(1, len(x) - length + 1), (1,), generator=generator))
        window = x[start:start + length]
        mono[b, :len(window)] = window
        master[b, :, :UPSAMPLE * len(window)] = y[:, UPSAMPLE * start:UPSAMPLE * (start + len(window))]
    return mono, master


def train_vae(out_dir, pairs: list, config: VAEConfig | str = "toy", seed: int = 0, codec: Codec | None = None,
              steps: int | None = None, batch_size: int | None = None, progress: bool = True) -> EnhanceVAE:
    """Train on [(16 kHz mono (N,), 48 kHz stereo master (2, 3N))]; writes out_dir/vae.pt at the end.

    With a `codec`, each mono input is first replaced by its codec round trip, so the VAE
    learns to undo the codec too (the paper's setting); without one it learns only super-
    resolution and spatialisation. steps / batch_size override the config's (and are saved).
    Deterministic from `seed` (init, crops, latent noise).
    """
    torch.manual_seed(seed)
    config = VAE_PRESETS[config] if isinstance(config, str) else config
    overrides = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    config = VAEConfig(**{**asdict(config), **overrides})
    if codec is not None:
        pairs = [(round_trip(codec.eval(), x), y) for x, y in pairs]
    pairs = [(torch.as_tensor(np.asarray(x, np.float32)), torch.as_tensor(np.asarray(y, np.float32))) for x, y in pairs]
    vae = EnhanceVAE(config).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=config.lr, betas=(0.8, 0.99))
    generator = torch.Generator().manual_seed(seed)
    length = int(config.crop_seconds * LM_SR)
    bar = tqdm(range(config.steps), desc="vae", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, config.steps, config.lr)
        mono, master = random_crops(pairs, config.batch_size, length, generator)
        terms = vae_losses(vae, mono, master, generator)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in terms.items()})
    save_checkpoint(Path(out_dir) / "vae.pt", vae, config.steps)
    return vae.eval()


# ---------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_vae(vae: EnhanceVAE, pairs: list, codec: Codec | None = None) -> dict:
    """Score the VAE and the naive baseline against the masters of [(mono, master)] pairs.

    -> {'distance': {'baseline', 'vae'}, 'high_band': {'master', 'baseline', 'vae'},
        'correlation': {'master', 'baseline', 'vae'}}, each a mean over clips.
    distance: mel_distance to the master (48 kHz, both channels); high_band: share of energy
    above 8 kHz; correlation: of left with right (the baseline's is 1: both channels equal).
    With a `codec`, both VAE and baseline start from the codec round trip of the mono.
    """
    vae.eval()
    rows = []
    for mono, master in pairs:
        x = round_trip(codec, mono) if codec is not None else mono
        x = torch.as_tensor(np.asarray(x, np.float32))[None]  # [1, N]
        target = torch.as_tensor(np.asarray(master, np.float32))  # [2, 3N]
        outputs = {"master": target, "baseline": upsample(x).expand(2, -1), "vae": vae(x)[0]}
        rows.append({"distance": {k: float(mel_distance(outputs[k][None], target[None])) for k in ("baseline", "vae")},
                     "high_band": {k: high_band_fraction(v) for k, v in outputs.items()},
                     "correlation": {k: channel_correlation(v) for k, v in outputs.items()}})
    return {metric: {k: float(np.mean([r[metric][k] for r in rows])) for k in rows[0][metric]} for metric in rows[0]}


def report(result: dict) -> str:
    """The evaluation as a small table: the log-mel distance to the master (VAE vs baseline, and how much
    lower the VAE's is), then the energy above 8 kHz and the left/right correlation of each output."""
    d = result["distance"]
    lines = [f"log-mel distance to master: baseline {d['baseline']:.3f}   vae {d['vae']:.3f}   "
             f"({100 * (1 - d['vae'] / d['baseline']):.1f}% lower)"]
    for metric, label in (("high_band", "energy above 8 kHz"), ("correlation", "left/right correlation")):
        lines.append(f"{label:>22}: " + "   ".join(f"{k} {v:.4f}" for k, v in result[metric].items()))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description="Train the enhancement VAE on the toy world, then score it on held-out clips.")
    p.add_argument("--out", default="runs/vae", help="folder for vae.pt")
    p.add_argument("--preset", default="toy", choices=list(VAE_PRESETS), help="model size and training schedule")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="crops per step (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="training seed (init, crops, latent noise)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the toy world")
    p.add_argument("--codec", default=None, help="codec.pt: train and score on codec round trips (default: plain mono)")
    p.add_argument("--eval-clips", type=int, default=30, help=f"held-out clips: world indices from {HELD_OUT} on")
    p.add_argument("--eval-only", action="store_true", help="score out/vae.pt without training")
    args = p.parse_args()
    start = time.time()
    codec = Codec.from_checkpoint(args.codec) if args.codec else None
    print(f"input: {'codec round trip (' + args.codec + ')' if codec else 'plain 16 kHz mono (no codec)'}")
    if args.eval_only:
        vae = EnhanceVAE.from_checkpoint(Path(args.out) / "vae.pt")
    else:
        pairs = world_pairs(args.world_seed, range(VAE_PRESETS[args.preset].n_clips))
        print(f"synthesised {len(pairs)} clips in {time.time() - start:.0f} s")
        vae = train_vae(args.out, pairs, args.preset, args.seed, codec, args.steps, args.batch_size)
        print(f"trained in {time.time() - start:.0f} s (synthesis included)")
    held_out = world_pairs(args.world_seed, range(HELD_OUT, HELD_OUT + args.eval_clips))
    print(report(evaluate_vae(vae, held_out, codec)))


if __name__ == "__main__":
    main()
