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

The "toy" preset is the same network at CPU size, trained here on the toy world: first a toy
semantic teacher (a Hubert that learns which events sound in each frame), frozen, then the codec
with X-codec's objectives (train_teacher, train_xcodec; the adversarial terms left out):

    python xcodec.py --out runs/xcodec --minutes 10   # teacher, codec, then scores and probes on held-out clips
"""

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm
from tqdm import tqdm

import rvq
from checkpoint import load_checkpoint, load_module, read_config
from codec import Codec, evaluate_codec, spectral_losses, world_clips
from toy.world import KEYWORDS
from utils import fail, learning_rate, save_atomic

SAMPLE_RATE = 16000

# -----------------------------------------------------------------------------
# Config: transformers' XcodecConfig, with its DAC and HuBERT sub-configs


def pick(cls, d):
    """The entries of a config.json dict that are fields of the dataclass cls, lists as tuples
    (so configs compare equal). pick(AcousticConfig, {"hidden_size": 8, "n_codebooks": 9}) == {"hidden_size": 8}"""
    names = {f.name for f in fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}


@dataclass
class AcousticConfig:  # DAC's encoder and decoder
    encoder_hidden_size: int = 64  # width after the first conv; doubled by each block
    downsampling_ratios: tuple = (8, 5, 4, 2)  # hop 320
    decoder_hidden_size: int = 1024  # width after the first conv; halved by each block
    upsampling_ratios: tuple = (8, 5, 4, 2)  # X-codec keeps the encoder's order (DAC reverses it)
    hidden_size: int = 256  # the acoustic latent


@dataclass
class SemanticConfig:  # HuBERT
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple = (512,) * 7
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)  # 320 samples per frame: 50 Hz
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group": GroupNorm on the first conv; "layer": LayerNorm on each
    feat_proj_layer_norm: bool = True
    do_stable_layer_norm: bool = False  # False: post-norm layers (HuBERT base); True: pre-norm
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5

    @property
    def receptive_field(self):
        """Samples behind one frame of the conv front end: 400 in base (25 ms)."""
        r = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            r = (r - 1) * s + k
        return r

    @classmethod
    def from_hf(cls, d):
        """transformers' HubertConfig dict -> ours; only the GELU, weight-normed variant exists."""
        if d.get("model_type", "hubert") != "hubert":
            raise ValueError(f"semantic model {d.get('model_type')!r}: only HuBERT teachers are supported "
                             "(use an xcodec-hubert-* checkpoint).")
        if (d.get("hidden_act", "gelu"), d.get("feat_extract_activation", "gelu"),
                d.get("conv_pos_batch_norm", False)) != ("gelu", "gelu", False):
            raise ValueError("only HuBERT with GELU and a weight-normed positional conv is supported.")
        return cls(**pick(cls, d))


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
# The semantic teacher: HuBERT


class FeatureConv(nn.Module):
    """One conv of HuBERT's waveform front end, unpadded: (B, C, T) -> (B, C', (T - k) // s + 1),
    then GroupNorm with one group per channel ("group", first layer only), LayerNorm over
    channels ("layer"), or nothing; then GELU."""

    def __init__(self, c_in, c_out, kernel, stride, bias, norm):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out)

    def forward(self, x):
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        if cfg.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm={cfg.feat_extract_norm!r}: HuBERT has 'group' or 'layer'.")
        c_in = (1,) + cfg.conv_dim[:-1]
        norms = [cfg.feat_extract_norm] + [None if cfg.feat_extract_norm == "group" else "layer"] * (len(c_in) - 1)
        self.conv_layers = nn.ModuleList(FeatureConv(*args, cfg.conv_bias, norm) for *args, norm in
                                         zip(c_in, cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride, norms))

    def forward(self, wav):  # (B, N) -> (B, conv_dim[-1], T)
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps) if cfg.feat_proj_layer_norm else None
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x):  # (B, T, conv_dim[-1]) -> (B, T, D)
        return self.projection(x if self.layer_norm is None else self.layer_norm(x))


class PositionalConv(nn.Module):
    """HuBERT's relative positions: a wide grouped conv over time (128 taps, 16 groups in base),
    weight-normed over the kernel axis (dim=2), then GELU. (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = weight_norm(nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2,
                                          groups=cfg.num_conv_pos_embedding_groups), dim=2)
        self.trim = 1 - k % 2  # an even kernel with padding k/2 makes one frame too many

    def forward(self, x):
        y = self.conv(x.transpose(1, 2))
        return F.gelu(y[..., :y.shape[-1] - self.trim]).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):  # (B, T, D), every frame sees every frame
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class HubertLayer(nn.Module):
    """A transformer layer, post-norm (HuBERT base) or pre-norm (do_stable_layer_norm)."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.attention = Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class HubertEncoder(nn.Module):
    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConv(cfg)
        # post-norm: normalises the input of layer 0. pre-norm: would normalise the last layer's
        # output into HuBERT's last_hidden_state, which X-codec never reads (the hidden states it
        # averages stop before this norm, as transformers returns them)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(HubertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x):  # (B, T, D) -> [the input of layer 0, the output of each layer]
        x = x + self.pos_conv_embed(x)
        if not self.pre_norm:
            x = self.layer_norm(x)
        hidden = [x]
        for layer in self.layers:
            hidden.append(layer(hidden[-1]))
        return hidden


class Hubert(nn.Module):
    """wav (B, N) -> num_hidden_layers + 1 hidden states (B, T, D), T = (N - 80) // 320 in base
    (unpadded convs; 400 samples make the first frame)."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = HubertEncoder(cfg)

    def forward(self, wav):
        x = self.feature_extractor(wav).transpose(1, 2)  # (B, T, conv_dim[-1])
        return self.encoder(self.feature_projection(x))

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
N_TAGS = 2 * N_KEYWORDS + 4  # per frame: each keyword sounding, each keyword's unit starting, low/high, loud/quiet
SILENCE = N_KEYWORDS  # the probe's class of a frame where nothing sounds
PROBE_RIDGE = 1e-3  # the probe's ridge, as a share of the mean feature energy


def event_frames(events, n_frames):
    """A plan's events -> (n_frames, N_TAGS) 0/1 targets at 50 Hz, frame t covering [t/50, (t+1)/50) s
    (clap.frame_tags' tags at the codec's frame rate). e.g. a drum with hits at 0.1 s and 0.5 s, offset
    0.8 s: 'drum sounding' in frames 5..40, 'drum unit starts' in frames 5 and 25."""
    tags = torch.zeros(n_frames, N_TAGS)
    frame = lambda t: min(n_frames - 1, int(t * FRAME_RATE))  # noqa: E731
    for ev in events:
        k = KEYWORDS.index(ev["keyword"])
        a, b = frame(ev["onset"]), frame(ev["offset"]) + 1
        tags[a:b, k] = 1
        for t in ev.get("times", [ev["onset"]]):
            tags[frame(t), N_KEYWORDS + k] = 1
        if ev.get("pitch") in ("low", "high"):
            tags[a:b, 2 * N_KEYWORDS + (ev["pitch"] == "high")] = 1
        if ev.get("loudness") in ("loud", "quiet"):
            tags[a:b, 2 * N_KEYWORDS + 2 + (ev["loudness"] == "quiet")] = 1
    return tags


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
    """Write {config, model, step, recipe} atomically: the model's inference weights, the teacher's
    included (the moving averages are not kept); load_xcodec rebuilds it."""
    save_atomic({"config": asdict(codec.config), "model": codec.state_dict(), "step": step,
                 "recipe": asdict(recipe)}, path)


def load_xcodec(path, config: XCodecConfig | None = None) -> XCodec:
    """An XCodec saved by train_xcodec, in eval mode, or one clear error (checkpoint.load_module)."""
    return load_module(XCodec, XCodecConfig, path, config, "xcodec", "python xcodec.py --out DIR")


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
        fail(f"{path} not found: train it first with `python xcodec.py --out {args.out}`.")
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
    print(f"log-mel distance (reconstruction vs original): {result['log_mel_distance']:.3f}")
    print(f"semantic error (teacher features from the codes, share of their variance): {result['semantic_error']:.3f}")
    for key in result["original"]:
        print(f"{key:>8}: original {100 * result['original'][key]:5.1f}%   "
              f"reconstruction {100 * result['reconstruction'][key]:5.1f}%")
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
