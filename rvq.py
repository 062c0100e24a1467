"""Residual vector quantisation (SoundStream, EnCodec, X-codec): K codebooks, each quantising
what the codebooks before it left over, so a vector becomes K indices and the first ones
carry the most. codec.py quantises its 50 Hz latents with 8 codebooks of 1024.

    rvq = ResidualVQ(n_codebooks=8, size=1024, dim=64, decay=0.99, dead_threshold=0.05)
    quantised, codes, commit = rvq(z)      # z [B, 64, T] -> [B, 64, T], [B, 8, T], scalar
    rvq.decode(codes)                      # -> the sum of the chosen vectors [B, 64, T]

The codebooks are not trained by gradients: each starts as k-means of the first batch's
residuals, follows its assigned vectors by an exponential moving average (VQ-VAE-2,
SoundStream), and a code that falls out of use restarts at a random residual of the
batch. The encoder in front learns through the straight-through estimator (the gradient
passes the quantiser unchanged) and the commitment loss pulls it toward its codes.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizer(nn.Module):
    """One codebook of `size` vectors, learned by k-means init + EMA, with dead-code restarts."""

    def __init__(self, size: int, dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.size, self.decay, self.dead_threshold = size, decay, dead_threshold
        self.register_buffer("codebook", torch.zeros(size, dim))
        self.register_buffer("ema_count", torch.zeros(size))  # vectors assigned per batch
        self.register_buffer("ema_sum", torch.zeros(size, dim))  # their sum
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> index [N] of the closest code (squared Euclidean distance)."""
        d = x.pow(2).sum(1, keepdim=True) - 2 * x @ self.codebook.T + self.codebook.pow(2).sum(1)
        return d.argmin(1)

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, iters: int = 10):
        """Codebook <- k-means of x [N, D], seeded with random rows (repeated when N < size)."""
        self.codebook.copy_(x[torch.randint(len(x), (self.size,))])
        for _ in range(iters):
            idx = self.nearest(x)
            count = torch.bincount(idx, minlength=self.size).float()
            total = torch.zeros_like(self.codebook).index_add_(0, idx, x)
            used = count > 0
            self.codebook[used] = total[used] / count[used, None]
        self.ema_sum.copy_(self.codebook)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, idx: torch.Tensor):
        """Move each code to the running mean of its vectors; restart the unused ones."""
        count = torch.bincount(idx, minlength=self.size).float()
        total = torch.zeros_like(self.codebook).index_add_(0, idx, x)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        self.codebook.copy_(self.ema_sum / self.ema_count.clamp(min=1e-5)[:, None])
        dead = self.ema_count < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            fresh = x[torch.randint(len(x), (n_dead,))]
            self.codebook[dead], self.ema_sum[dead], self.ema_count[dead] = fresh, fresh, 1.0

    def forward(self, x: torch.Tensor):
        """x [N, D] -> (quantised [N, D] with straight-through gradient, codes [N], commitment loss)."""
        if self.training and not self.initialised:
            self.kmeans_init(x.detach())
        idx = self.nearest(x.detach())
        q = self.codebook[idx]
        if self.training:
            self.ema_update(x.detach(), idx)
        commit = F.mse_loss(x, q)  # codebook is a buffer: only the encoder side gets gradient
        return x + (q - x).detach(), idx, commit


class ResidualVQ(nn.Module):
    """Codebook k quantises what codebooks 1..k-1 left over: z [B, D, T] -> codes [B, K, T]."""

    def __init__(self, n_codebooks: int, size: int, dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantizer(size, dim, decay, dead_threshold) for _ in range(n_codebooks))

    def forward(self, z: torch.Tensor):
        """z [B, D, T] -> (quantised [B, D, T], codes [B, K, T], summed commitment loss)."""
        B, D, T = z.shape
        residual = z.transpose(1, 2).reshape(B * T, D)
        quantised, codes, commit = torch.zeros_like(residual), [], 0.0
        for vq in self.layers:
            q, idx, c = vq(residual)
            residual = residual - q.detach()
            quantised, commit = quantised + q, commit + c
            codes.append(idx.view(B, T))
        return quantised.view(B, T, D).transpose(1, 2), torch.stack(codes, 1), commit

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> sum of the chosen code vectors [B, D, T]."""
        return sum(vq.codebook[codes[:, k]] for k, vq in enumerate(self.layers)).transpose(1, 2)
