"""X-codec (Ye et al. 2024, "Codec does matter"), the audio tokenizer UALM writes audio in
(SPEC.md section 2), from scratch: 16 kHz mono <-> 8 codebooks x 1024 at 50 Hz (4 kbps).

codec.py is the toy stand-in the project trains on a CPU; this file is the real network, so
the released `xcodec-hubert-general` weights (transformers' XcodecModel layout: config.json +
model.safetensors) load with a checked, near-identity copy and give the same codes and audio.

An acoustic DAC encoder and a frozen HuBERT teacher see the same clip; their features are
concatenated, mixed by `fc` and quantised together by one residual VQ, so the first
codebooks carry meaning as well as sound:

    wav (B, N) --DAC encoder (strides 8,5,4,2)---------------------------> (B, 256, T)  T = N/320
        --pad 160 each side--HuBERT--mean of its 13 hidden states--> (B, T, 768)
          --semantic encoder (residual convs)-------------------------> (B, 768, T)
    concat (B, 1024, T) --fc--> RVQ, 8 Euclidean codebooks of 1024 --> codes (B, 8, T)
    codes --sum of the code vectors--fc2--> (B, 256, T) --DAC decoder (no tanh)--> wav (B, 320 T)
                                   --fc1--semantic decoder--> (B, 768, T): HuBERT's features back

Module names equal transformers' XcodecModel checkpoint keys (`acoustic_encoder.block.0.
res_unit1.conv1.weight`, `semantic_model.encoder.layers.0.attention.q_proj.weight`, ...). The
only renames on loading: both spellings of weight norm (`weight_g`/`weight_v` and
`parametrizations.weight.original0`/`original1`), folded into a plain weight where our conv
has none, and the training-only tensors (the codebooks' k-means state, HuBERT's mask vector)
are dropped.

The "toy" preset is the same network at CPU size, trained on the toy world by xcodec_train.py.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import load_checkpoint, read_config
from hubert import Hubert, SemanticConfig
from utils import pick

SAMPLE_RATE = 16000

# -----------------------------------------------------------------------------
# Config: transformers' XcodecConfig, with its DAC and HuBERT sub-configs


@dataclass
class AcousticConfig:  # DAC's encoder and decoder
    encoder_hidden_size: int = 64  # width after the first conv; doubled by each block
    downsampling_ratios: tuple = (8, 5, 4, 2)  # hop 320
    decoder_hidden_size: int = 1024  # width after the first conv; halved by each block
    upsampling_ratios: tuple = (8, 5, 4, 2)  # X-codec keeps the encoder's order (DAC reverses it)
    hidden_size: int = 256  # the acoustic latent


@dataclass
class XCodecConfig:
    sample_rate: int = SAMPLE_RATE
    acoustic: AcousticConfig = field(default_factory=AcousticConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    kernel_size: int = 3  # semantic encoder/decoder: outer convs
    channel_ratios: tuple = (1, 1)  # semantic encoder/decoder: one block per entry
    strides: tuple = (1, 1)
    block_dilations: tuple = (1, 1)  # one residual unit per entry
    unit_kernel_size: int = 3
    codebook_size: int = 1024
    target_bandwidths: tuple = (0.5, 1, 1.5, 2, 4)  # kbps; the last one sets the codebook count

    def __post_init__(self):
        """Sub-configs given as dicts (asdict's, in a checkpoint) become dataclasses again, so
        XCodecConfig(**asdict(c)) == c."""
        if isinstance(self.acoustic, dict):
            self.acoustic = AcousticConfig(**self.acoustic)
        if isinstance(self.semantic, dict):
            self.semantic = SemanticConfig(**self.semantic)

    @property
    def hop_length(self):
        return math.prod(self.acoustic.downsampling_ratios)

    @property
    def frame_rate(self):
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def hidden_size(self):  # the quantised vector: acoustic + semantic
        return self.acoustic.hidden_size + self.semantic.hidden_size

    @property
    def num_quantizers(self):
        """Codebooks held: the top bandwidth in whole codebooks. 4 kbps / (50 Hz x 10 bits) = 8."""
        bits = math.ceil(math.log2(self.codebook_size))
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * bits))

    @property
    def n_q(self):
        """Codebooks `encode` uses: transformers' count for the top bandwidth (8 of 8 at 4 kbps)."""
        per_codebook = math.log2(self.codebook_size) * self.frame_rate / 1000  # kbps
        return min(self.num_quantizers, max(1, math.floor(self.target_bandwidths[-1] / per_codebook)))

    @classmethod
    def from_hf(cls, d):
        """transformers' XcodecConfig dict (config.json) -> ours. Missing fields take
        XcodecConfig's defaults, which are also ours."""
        acoustic = AcousticConfig(**pick(AcousticConfig, d.get("acoustic_model_config") or {}))
        return cls(**pick(cls, d), acoustic=acoustic, semantic=SemanticConfig.from_hf(d.get("semantic_model_config") or {}))


PRESETS = {
    # hf-audio/xcodec-hubert-general: DAC 64 -> 1024 wide, HuBERT base teacher, 8 x 1024 at 50 Hz
    "xcodec-hubert-general": XCodecConfig(),
    # a CPU toy of the same shape: hop 320, 50 Hz, 8 codebooks of 1024
    "tiny": XCodecConfig(
        acoustic=AcousticConfig(encoder_hidden_size=8, decoder_hidden_size=64, hidden_size=32),
        semantic=SemanticConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    # the toy world's X-codec, trained on a CPU (train_xcodec): the same shape, a toy teacher
    "toy": XCodecConfig(
        acoustic=AcousticConfig(encoder_hidden_size=8, decoder_hidden_size=64, hidden_size=64),
        semantic=SemanticConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                conv_dim=(64,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
}

# -----------------------------------------------------------------------------
# The acoustic encoder and decoder: DAC's


class Snake1d(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel: a periodic activation for waveforms."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1))

    def forward(self, x):  # (B, C, T)
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class AcousticResidualUnit(nn.Module):
    """snake, conv k7 dilated, snake, conv k1, plus the input. Keeps (B, C, T)."""

    def __init__(self, dim, dilation):
        super().__init__()
        self.snake1 = Snake1d(dim)
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=1)

    def forward(self, x):
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class AcousticEncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9), then a strided conv: (B, C, T) -> (B, 2C, T/s)."""

    def __init__(self, dim, stride):
        super().__init__()
        self.res_unit1, self.res_unit2, self.res_unit3 = (AcousticResidualUnit(dim, d) for d in (1, 3, 9))
        self.snake1 = Snake1d(dim)
        self.conv1 = nn.Conv1d(dim, 2 * dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x):
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class AcousticEncoder(nn.Module):
    """wav (B, 1, N) -> latent (B, hidden_size, T), T ~ N / hop."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        dim = cfg.encoder_hidden_size
        self.conv1 = nn.Conv1d(1, dim, kernel_size=7, padding=3)
        self.block = nn.ModuleList(AcousticEncoderBlock(dim * 2**i, s) for i, s in enumerate(cfg.downsampling_ratios))
        dim *= 2 ** len(cfg.downsampling_ratios)
        self.snake1 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, cfg.hidden_size, kernel_size=3, padding=1)

    def forward(self, x):
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class AcousticDecoderBlock(nn.Module):
    """A transposed conv, then three residual units: (B, C, T) -> (B, C/2, s T).
    X-codec's change to DAC: output_padding = s % 2, so an odd stride also gives exactly s T."""

    def __init__(self, dim, stride):
        super().__init__()
        self.snake1 = Snake1d(dim)
        self.conv_t1 = nn.ConvTranspose1d(dim, dim // 2, kernel_size=2 * stride, stride=stride,
                                          padding=math.ceil(stride / 2), output_padding=stride % 2)
        self.res_unit1, self.res_unit2, self.res_unit3 = (AcousticResidualUnit(dim // 2, d) for d in (1, 3, 9))

    def forward(self, x):
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class AcousticDecoder(nn.Module):
    """latent (B, hidden_size, T) -> wav (B, 1, hop T). X-codec drops DAC's final tanh."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        dim = cfg.decoder_hidden_size
        self.conv1 = nn.Conv1d(cfg.hidden_size, dim, kernel_size=7, padding=3)
        self.block = nn.ModuleList(AcousticDecoderBlock(dim // 2**i, s) for i, s in enumerate(cfg.upsampling_ratios))
        dim //= 2 ** len(cfg.upsampling_ratios)
        self.snake1 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, 1, kernel_size=7, padding=3)

    def forward(self, x):
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))

# -----------------------------------------------------------------------------
# X-codec's semantic encoder and decoder: residual convs on HuBERT's features


class SemanticResidualUnit(nn.Module):
    """ELU, conv (dilated, no bias), ELU, conv k1 (no bias), plus the input. Keeps (B, C, T)."""

    def __init__(self, dim, kernel, dilation):
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2 * dilation, dilation=dilation, bias=False)
        self.conv2 = nn.Conv1d(dim, dim, 1, bias=False)

    def forward(self, x):
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class SemanticEncoderBlock(nn.Module):
    """Residual units, then a conv (kernel 3 at stride 1, else 2s): (B, C, T) -> (B, C', T/s)."""

    def __init__(self, cfg: XCodecConfig, c_in, c_out, stride):
        super().__init__()
        self.res_units = nn.ModuleList(SemanticResidualUnit(c_in, cfg.unit_kernel_size, d) for d in cfg.block_dilations)
        kernel = 3 if stride == 1 else 2 * stride
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2)

    def forward(self, x):
        for unit in self.res_units:
            x = unit(x)
        return self.conv(x)


class SemanticEncoder(nn.Module):
    """HuBERT's mean feature (B, D, T) -> (B, D, T) at strides (1, 1)."""

    def __init__(self, cfg: XCodecConfig):
        super().__init__()
        d, k = cfg.semantic.hidden_size, cfg.kernel_size
        widths = [d] + [int(d * r) for r in cfg.channel_ratios]
        self.conv = nn.Conv1d(d, d, k, padding=k // 2, bias=False)
        self.conv_blocks = nn.ModuleList(SemanticEncoderBlock(cfg, widths[i], widths[i + 1], s)
                                         for i, s in enumerate(cfg.strides))

    def forward(self, x):
        x = self.conv(x)
        for block in self.conv_blocks:
            x = block(x)
        return x


class SemanticDecoderBlock(nn.Module):
    """A conv k3 (stride 1) or a transposed conv (k 2s, up by s), then residual units."""

    def __init__(self, cfg: XCodecConfig, c_in, c_out, stride):
        super().__init__()
        if stride == 1:
            self.conv = nn.Conv1d(c_in, c_out, 3, padding=1)
        else:
            self.conv = nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride, padding=(stride + 1) // 2,
                                           output_padding=stride % 2, bias=False)
        self.res_units = nn.ModuleList(SemanticResidualUnit(c_out, cfg.unit_kernel_size, d)
                                       for d in cfg.block_dilations)

    def forward(self, x):
        x = self.conv(x)
        for unit in self.res_units:
            x = unit(x)
        return x


class SemanticDecoder(nn.Module):
    """(B, D, T) -> HuBERT's mean feature again (B, D, T): X-codec's semantic reconstruction."""

    def __init__(self, cfg: XCodecConfig):
        super().__init__()
        d, k = cfg.semantic.hidden_size, cfg.kernel_size
        widths = [int(d * r) for r in cfg.channel_ratios] + [d]
        self.conv1 = nn.Conv1d(d, widths[0], k, padding=k // 2, bias=False)
        self.conv_blocks = nn.ModuleList(SemanticDecoderBlock(cfg, widths[i], widths[i + 1], s)
                                         for i, s in enumerate(cfg.strides))
        self.conv2 = nn.Conv1d(d, d, k, padding=k // 2, bias=False)

    def forward(self, x):
        x = self.conv1(x)
        for block in self.conv_blocks:
            x = block(x)
        return self.conv2(x)

# -----------------------------------------------------------------------------
# The residual VQ: Euclidean codebooks, no projections


class Codebook(nn.Module):
    def __init__(self, size, dim):
        super().__init__()
        self.register_buffer("embed", torch.randn(size, dim))  # (K, D), replaced on loading

    def encode(self, x):
        """Nearest code by Euclidean distance: (..., D) -> (...). |x|^2 - 2 x.e + |e|^2 is
        expanded (one matmul) as X-codec does, so ties and rounding break the same way."""
        e = self.embed
        dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(-1)  # (..., K)
        return (-dist).argmax(-1)


class ResidualVQ(nn.Module):
    """Each codebook quantises what the ones before it left over.
    x (B, T, D) -> codes (B, n_q, T); codes -> sum of their vectors (B, T, D)."""

    def __init__(self, cfg: XCodecConfig):
        super().__init__()
        self.quantizers = nn.ModuleList(nn.ModuleDict({"codebook": Codebook(cfg.codebook_size, cfg.hidden_size)})
                                        for _ in range(cfg.num_quantizers))

    def encode(self, x, n_q):
        codes = []
        for q in self.quantizers[:n_q]:
            codes.append(q.codebook.encode(x))  # (B, T)
            x = x - F.embedding(codes[-1], q.codebook.embed)
        return torch.stack(codes, 1)

    def decode(self, codes):
        return sum(F.embedding(codes[:, i], q.codebook.embed) for i, q in enumerate(self.quantizers[:codes.shape[1]]))

# -----------------------------------------------------------------------------
# X-codec


class XCodec(nn.Module):
    def __init__(self, config: XCodecConfig):
        super().__init__()
        self.config = config
        self.acoustic_encoder = AcousticEncoder(config.acoustic)
        self.acoustic_decoder = AcousticDecoder(config.acoustic)
        self.encoder_semantic = SemanticEncoder(config)
        self.decoder_semantic = SemanticDecoder(config)
        self.semantic_model = Hubert(config.semantic)
        self.fc = nn.Linear(config.hidden_size, config.hidden_size)  # mixes acoustic and semantic before the RVQ
        self.fc1 = nn.Linear(config.hidden_size, config.semantic.hidden_size)  # quantised -> semantic decoder
        self.fc2 = nn.Linear(config.hidden_size, config.acoustic.hidden_size)  # quantised -> acoustic decoder
        self.quantizer = ResidualVQ(config)

    def acoustic_frames(self, n):
        """Frames the DAC encoder makes of n samples (a strided conv per block, k 2s, padding
        ceil(s/2)). acoustic_frames(32000) == 100 at strides (8, 5, 4, 2)."""
        for s in self.config.acoustic.downsampling_ratios:
            n = (n + 2 * math.ceil(s / 2) - 2 * s) // s + 1
        return n

    def check_wav(self, wav):
        """(B, N) or (B, 1, N) float audio -> (B, N) in the model's dtype, or one clear error."""
        if not torch.is_floating_point(wav):
            raise ValueError(f"audio has dtype {wav.dtype}; pass float samples in [-1, 1] (e.g. wav.float() / 32768).")
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        if wav.dim() != 2:
            raise ValueError(f"audio has shape {tuple(wav.shape)}; X-codec takes mono (B, N) or (B, 1, N) at "
                             f"{self.config.sample_rate} Hz: average the channels first.")
        return wav.to(self.fc.weight.dtype)

    @torch.no_grad()
    def semantic_features(self, wav):
        """X-codec's semantic input: HuBERT on the clip padded by hop/2 each side, the mean of its
        hidden states (the input of layer 0 and every layer's output).
        wav (B, N) or (B, 1, N) -> (B, T, D_semantic); 2 s at 16 kHz -> (B, 100, 768)."""
        wav, pad = self.check_wav(wav), self.config.hop_length // 2
        shortest = max(1, self.config.semantic.receptive_field - 2 * pad)
        if wav.shape[-1] < shortest:
            raise ValueError(f"audio has {wav.shape[-1]} samples; X-codec needs at least {shortest} "
                             "(one HuBERT frame).")
        return torch.stack(self.semantic_model(F.pad(wav, (pad, pad))), 1).mean(1)

    @torch.no_grad()
    def encode(self, wav):
        """wav (B, N) or (B, 1, N) float at 16 kHz -> codes (B, n_q, T) long, T ~ N / 320."""
        wav = self.check_wav(wav)
        semantic = self.encoder_semantic(self.semantic_features(wav).transpose(1, 2))  # (B, D_s, T)
        T = semantic.shape[-1]
        if self.acoustic_frames(wav.shape[-1]) != T:  # as X-codec: pad by hop/2 each side when that makes T
            pad = self.config.hop_length // 2
            wav = F.pad(wav, (pad, pad))
        acoustic = self.acoustic_encoder(wav[:, None])  # (B, D_a, T)
        x = self.fc(torch.cat([acoustic, semantic], 1).transpose(1, 2))  # (B, T, D)
        return self.quantizer.encode(x, self.config.n_q)

    def check_codes(self, codes):
        n_q, K = self.config.n_q, self.config.codebook_size
        if codes.dim() != 3 or codes.shape[1] != n_q:
            raise ValueError(f"codes have shape {tuple(codes.shape)}; X-codec decodes (B, {n_q}, T): "
                             f"one row per codebook, all {n_q} of them.")
        if torch.is_floating_point(codes) or codes.numel() and (codes.min() < 0 or codes.max() >= K):
            raise ValueError(f"codes must be integers in [0, {K}); got {codes.dtype} in "
                             f"[{codes.min().item()}, {codes.max().item()}]: strip pad or special tokens first.")
        return codes.long()

    @torch.no_grad()
    def decode(self, codes):
        """codes (B, n_q, T) -> wav (B, hop T) at 16 kHz (no channel axis)."""
        quantized = self.quantizer.decode(self.check_codes(codes))  # (B, T, D)
        return self.acoustic_decoder(self.fc2(quantized).transpose(1, 2))[:, 0]

    @torch.no_grad()
    def decode_semantic(self, codes):
        """codes (B, n_q, T) -> the HuBERT features X-codec learns to reconstruct (B, T, D_semantic)."""
        quantized = self.quantizer.decode(self.check_codes(codes))
        return self.decoder_semantic(self.fc1(quantized).transpose(1, 2)).transpose(1, 2)

    @classmethod
    def from_pretrained(cls, path, dtype=None, device="cpu"):
        """Build from a transformers XcodecModel folder (config.json + model.safetensors), in eval mode.
        dtype None keeps the stored dtype (the weights stay memory-mapped, no copy)."""
        hf = read_config(path)
        if hf.get("model_type", "xcodec") != "xcodec":
            raise ValueError(f"{path}/config.json is a {hf['model_type']!r} config; pass an X-codec folder "
                             "(e.g. xcodec-hubert-general).")
        cfg = XCodecConfig.from_hf(hf)
        with torch.device("meta"):
            model = cls(cfg)
        load_weights(model, load_checkpoint(path), f"{path}/model.safetensors")
        return model.to(device=device, dtype=dtype).eval()

# -----------------------------------------------------------------------------
# Loading: both weight-norm spellings, every key and shape checked before anything is assigned

TRAINING_ONLY = ("masked_spec_embed", "embed_avg", "cluster_size", "inited")  # SpecAugment, codebook k-means state


def normalize_keys(state, want):
    """A checkpoint's tensors -> the names `want` holds.
    'x.weight_g' / 'x.weight_v' -> 'x.parametrizations.weight.original0' / '.original1' (torch's new
    spelling); where `want` has a plain 'x.weight' (transformers' DAC convs), g and v are folded:
    weight = g v / |v|, the norm over every axis g is 1 on. Training-only tensors are dropped."""
    g_name, v_name = ".parametrizations.weight.original0", ".parametrizations.weight.original1"
    renames, out = {"weight_g": g_name, "weight_v": v_name}, {}
    for k, t in state.items():
        base, _, leaf = k.rpartition(".")
        if leaf not in TRAINING_ONLY:
            out[base + renames[leaf] if leaf in renames else k] = t
    for base in [k[:-len(g_name)] for k in out if k.endswith(g_name)]:
        if base + ".weight" in want and base + v_name in out:
            g, v = out.pop(base + g_name).float(), out.pop(base + v_name)
            axes = [d for d in range(v.dim()) if g.shape[d] == 1]
            out[base + ".weight"] = (g * v.float() / torch.linalg.vector_norm(v.float(), dim=axes, keepdim=True)).to(v.dtype)
    return out


def load_weights(model, state, path):
    """Copy `state` into `model` (built on meta or not) after checking every key and shape; the
    loaded tensors become the parameters and buffers (no copy). Raises one ValueError naming `path`."""
    want = dict(model.named_parameters()) | dict(model.named_buffers())
    state = normalize_keys(state, want)
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"{path}: config.json does not match the weights: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}; re-download the folder or fix config.json.")
    for k, p in want.items():
        if tuple(state[k].shape) != tuple(p.shape):
            raise ValueError(f"{path}: config.json does not match the weights: {k} has shape "
                             f"{tuple(state[k].shape)}, the config implies {tuple(p.shape)}.")
    modules = dict(model.named_modules())
    for k, t in state.items():
        module, _, leaf = k.rpartition(".")
        m = modules[module]
        if leaf in m._parameters:
            m._parameters[leaf] = nn.Parameter(t, requires_grad=False)  # X-codec is used frozen
        else:
            m._buffers[leaf] = t
    return model
