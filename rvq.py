"""Residual vector quantisation, the quantiser inside UALM's X-codec-style audio tokenizer
(SPEC.md section 2; as in SoundStream, EnCodec, X-codec): K codebooks, each quantising
what the codebooks before it left over, so a vector becomes K indices and the first ones
carry the most. codec.py quantises each 50 Hz frame's vector with 8 codebooks of 1024.

    rvq = ResidualVQ(n_codebooks=8, size=1024, dim=288)
    rvq.fit(z)                 # z [N, 288]: k-means, codebook after codebook
    codes = rvq.encode(z, beam=8)  # -> [N, 8] indices (a beam search over the codebooks)
    rvq.decode(codes)          # -> the sum of the chosen vectors [N, 288]

The codebooks are fitted by k-means (Lloyd's algorithm), not by gradients: codebook 1 on
the vectors, codebook k on what codebooks 1..k-1 leave of them. Each Lloyd step assigns a
random sample of the vectors to their nearest codes and moves every code to the mean of
its vectors; a code that gets none restarts at a random vector of the sample. The neural
codecs learn the same codebooks by moving averages of k-means steps inside gradient
training (VQ-VAE-2); ours has no encoder to train (codec.py says why), so plain k-means
on all the training frames is the whole of it.
"""

import torch
import torch.nn as nn
from tqdm import tqdm


class ResidualVQ(nn.Module):
    """K codebooks of `size` vectors of `dim`: z [N, dim] <-> codes [N, K]."""

    def __init__(self, n_codebooks: int, size: int, dim: int):
        super().__init__()
        self.register_buffer("codebooks", torch.zeros(n_codebooks, size, dim))

    @staticmethod
    def distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """x [..., D], codebook [C, D] -> squared Euclidean distances [..., C], as one matmul.

        |x - c|^2 = |x|^2 - 2 x.c + |c|^2 = [x, |x|^2, 1] . [-2c, 1, |c|^2]: the matmul writes
        the [..., C] result once, where adding the terms one by one reads and writes it three
        times more; the saving is largest on many frames at once, where memory traffic rather
        than the matmul dominates.
        e.g. ([[0.9, 0]], [[0, 0], [1, 0]]) -> [[0.81, 0.01]].
        """
        x_aug = torch.cat([x, x.pow(2).sum(-1, keepdim=True), torch.ones_like(x[..., :1])], -1)
        c_aug = torch.cat([-2 * codebook, torch.ones_like(codebook[:, :1]), codebook.pow(2).sum(1, keepdim=True)], -1)
        return x_aug @ c_aug.T

    @classmethod
    def nearest(cls, x: torch.Tensor, codebook: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """x [N, D], codebook [C, D] -> index [N] of the closest code; chunks keep the [N, C]
        distance matrix small. e.g. ([[0.9, 0]], [[0, 0], [1, 0]]) -> [1]."""
        return torch.cat([cls.distances(x[i:i + chunk], codebook).argmin(1) for i in range(0, len(x), chunk)])

    def encode(self, z: torch.Tensor, beam: int = 1, chunk: int = 8192) -> torch.Tensor:
        """z [N, D] -> codes [N, K], the vectors' sum of codes closest to z that a beam search finds.

        beam 1 is the usual greedy RVQ: codebook k takes the nearest code to what 1..k-1
        left. A wider beam keeps, after each codebook, the `beam` best partial sums of every
        vector and returns the best full one: a greedy early choice can leave a residual that
        the later codebooks code badly. The cost grows with the beam: each candidate is one
        more row in every codebook's distance matmul.
        """
        return torch.cat([self._beam(z[i:i + chunk], beam) for i in range(0, len(z), chunk)])

    def _beam(self, z: torch.Tensor, beam: int) -> torch.Tensor:
        N, D = z.shape
        residual = z[:, None]  # [N, b, D]: what each candidate has left to code
        codes = torch.zeros(N, 1, 0, dtype=torch.long, device=z.device)  # [N, b, k]: its codes so far
        for codebook in self.codebooks:
            size = len(codebook)
            distance = self.distances(residual, codebook)  # [N, b, size]
            best = distance.flatten(1).topk(min(beam, distance[0].numel()), dim=1, largest=False).indices  # [N, B]
            parent, code = best // size, best % size
            residual = residual.gather(1, parent[..., None].expand(-1, -1, D)) - codebook[code]
            codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, codes.shape[-1])), code[..., None]], -1)
        return codes[torch.arange(N), residual.pow(2).sum(-1).argmin(1)]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N, K] -> the sum of the chosen code vectors [N, D]."""
        return sum(codebook[codes[:, k]] for k, codebook in enumerate(self.codebooks))

    @torch.no_grad()
    def fit(self, z: torch.Tensor, iters: int = 10, sample: int = 200_000, generator: torch.Generator | None = None,
            progress: bool = True):
        """Fit every codebook by k-means on z [N, D]: codebook k on the residuals of 1..k-1.

        Each of the `iters` Lloyd steps per codebook uses a fresh random sample of `sample`
        residuals (all of them when N is smaller), which makes a step cost the same however
        many frames there are. Deterministic for a given generator.
        """
        K, size, _ = self.codebooks.shape
        residual = z.clone()
        bar = tqdm(total=K * iters, desc="rvq k-means", disable=not progress)
        for k in range(K):
            codebook = residual[torch.randperm(len(residual), generator=generator)[:size]].clone()
            if len(codebook) < size:  # fewer vectors than codes: repeat them
                codebook = codebook[torch.arange(size) % len(codebook)]
            for _ in range(iters):
                x = residual[torch.randperm(len(residual), generator=generator)[:sample]]
                idx = self.nearest(x, codebook)
                count = torch.bincount(idx, minlength=size).float()
                total = torch.zeros_like(codebook).index_add_(0, idx, x)
                used = count > 0
                codebook[used] = total[used] / count[used, None]
                dead = (~used).nonzero()[:, 0]
                codebook[dead] = x[torch.randint(len(x), (len(dead),), generator=generator)]
                bar.update()
            self.codebooks[k] = codebook
            residual -= codebook[self.nearest(residual, codebook)]
        bar.close()
