"""codec.py: Griffin-Lim on a sine, the
principal axes against numpy's SVD, the RVQ against a brute-force search and on points it
must code exactly, shapes and rates, a micro fit, and checkpoints that load exactly or
fail clearly."""

import math

import numpy as np
import pytest
import torch

import model
from codec import (CODEBOOK_SIZE, CODEC_PRESETS, HOP, N_BINS, N_CODEBOOKS, N_FFT, SAMPLE_RATE, Codec, CodecConfig,
                   error_budget, evaluate_codec, griffin_lim, principal_axes, save_checkpoint, stft_frames,
                   train_codec, world_clips)
from sequences import delay_pattern
from toy.analyzer import adherence, analyze
from rvq import ResidualVQ

MICRO = CODEC_PRESETS["micro"]


def tones(n: int, seconds: float = 1.0, seed: int = 0) -> list:
    """n clips of two decaying sines at random pitches and levels: a stand-in for world audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return [(rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * np.exp(-t * rng.uniform(0, 3))
             + 0.1 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro codec fitted to 16 clips, and the folder holding its checkpoint."""
    out = tmp_path_factory.mktemp("codec")
    return train_codec(out, tones(16), MICRO, seed=0, progress=False), out


# ---------------------------------------------------------------------------------------------- constants
def test_constants_match_the_lm_vocabulary():
    assert (N_CODEBOOKS, CODEBOOK_SIZE) == (model.N_STREAMS, model.CODEBOOK_SIZE)


# ---------------------------------------------------------------------------------------------- frames, Griffin-Lim
def test_frames_line_up_with_codes():
    assert stft_frames(torch.zeros(2, 50 * HOP)).shape == (2, N_BINS, 50)
    assert (N_FFT // HOP, N_BINS) == (4, 641)


def test_principal_axes_match_numpy_svd():
    """principal_axes against numpy's SVD of the centred rows: the same mean, the same top-K
    subspace (compared as projectors: axes carry no sign), the same variance along each
    axis; and a codec's coordinates of a frame within that span map back to it."""
    rng = np.random.default_rng(0)
    frames = (rng.standard_normal((500, 40)) @ rng.standard_normal((40, N_BINS)) * 0.3 + 2).astype(np.float32)
    mean, basis, variance = principal_axes(torch.from_numpy(frames), 12)
    centred = frames.astype(np.float64) - frames.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(mean.numpy(), frames.mean(0), atol=1e-5)
    np.testing.assert_allclose(basis.double().numpy().T @ basis.double().numpy(), vt[:12].T @ vt[:12], atol=1e-4)
    np.testing.assert_allclose(variance.numpy(), s[:12] ** 2 / (len(frames) - 1), rtol=1e-4)
    codec = Codec(CodecConfig(n_components=12))
    codec.mean, codec.basis = mean, basis
    inside = torch.from_numpy((frames.mean(0) + 0.5 * vt[3] - 0.2 * vt[7]).astype(np.float32))
    coordinates = codec.coordinates(inside, torch.zeros(128))[:12]
    torch.testing.assert_close(coordinates @ basis + mean, inside, atol=1e-4, rtol=0)


def test_griffin_lim_recovers_a_sine_from_its_magnitude():
    """The exact |STFT| of a 440 Hz sine: 32 iterations bring the random start phase's 66%
    magnitude error under 10%, and the peak stays on bin 35 (440 Hz / 12.5 Hz per bin)."""
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    sine = (0.5 * torch.sin(2 * math.pi * 440 * t))[None]  # [1, 16000]
    mag = stft_frames(sine).abs()  # [1, 641, 50]

    def error(wav):
        return float(torch.linalg.norm(stft_frames(wav).abs() - mag) / torch.linalg.norm(mag))

    wav = griffin_lim(mag)
    assert wav.shape == (1, SAMPLE_RATE)
    assert error(wav) < 0.1 and error(griffin_lim(mag, iters=0)) > 0.5
    assert stft_frames(wav).abs().mean(-1).argmax() == 35 == mag.mean(-1).argmax()
    assert torch.equal(griffin_lim(mag), wav)  # deterministic: a fixed-seed start phase


# ---------------------------------------------------------------------------------------------- shapes and RVQ
def test_encode_decode_shapes_and_rates(trained):
    codec, _ = trained
    wav = torch.from_numpy(tones(2)[0])[None]  # [1, 16000]: 1 s
    codes = codec.encode(wav)
    assert codes.shape == (1, 8, 50) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < CODEBOOK_SIZE
    assert codec.decode(codes).shape == (1, 16000)
    assert torch.equal(codec.encode(wav[:, None]), codes)  # [B, 1, N] works too
    assert codec.encode(torch.zeros(3, HOP + 1)).shape == (3, 8, 2)  # a partial frame is padded
    with pytest.raises(ValueError, match="undelay_pattern"):
        codec.decode(delay_pattern(codes))


def test_rvq_distances_match_numpy():
    """The one-matmul distances ([x, |x|^2, 1] . [-2c, 1, |c|^2]) equal numpy's squared differences, batched too."""
    g = torch.Generator().manual_seed(1)
    x, books = torch.randn(2, 30, 6, generator=g), torch.randn(9, 6, generator=g)
    want = ((x.double().numpy()[..., None, :] - books.double().numpy()) ** 2).sum(-1)
    np.testing.assert_allclose(ResidualVQ.distances(x, books).double().numpy(), want, atol=1e-4)


def test_rvq_encode_decode_match_a_brute_force_search():
    """Random codebooks: each stage's code is numpy's argmin of the distances to what the
    stages before left, and decode is the sum of the chosen vectors."""
    g = torch.Generator().manual_seed(0)
    rvq = ResidualVQ(3, 16, 5)
    rvq.codebooks.copy_(torch.randn(3, 16, 5, generator=g))
    z = torch.randn(40, 5, generator=g)
    codes = rvq.encode(z)
    residual, books = z.double().numpy(), rvq.codebooks.double().numpy()
    for k in range(3):
        want = ((residual[:, None] - books[k][None]) ** 2).sum(-1).argmin(1)
        np.testing.assert_array_equal(codes[:, k].numpy(), want)
        residual = residual - books[k][want]
    np.testing.assert_allclose(rvq.decode(codes).double().numpy(), z.double().numpy() - residual, atol=1e-5)


def test_beam_search_finds_the_best_combination_when_it_keeps_them_all():
    """3 codebooks of 4 codes: a beam of 64 keeps every combination, so it must return the
    one an exhaustive search over all 64 finds; a beam of 4 does better than greedy on average
    (not on every vector: the greedy path can fall out of the beam)."""
    g = torch.Generator().manual_seed(1)
    rvq = ResidualVQ(3, 4, 3)
    rvq.codebooks.copy_(torch.randn(3, 4, 3, generator=g))
    z = torch.randn(200, 3, generator=g)
    books = rvq.codebooks.double().numpy()
    sums = np.array([[books[0][a] + books[1][b] + books[2][c] for c in range(4)] for a in range(4) for b in range(4)])
    best = ((z.double().numpy()[:, None, None] - sums[None]) ** 2).sum(-1).reshape(200, -1).min(1)
    error = lambda beam: ((z - rvq.decode(rvq.encode(z, beam))) ** 2).sum(1).double().numpy()
    np.testing.assert_allclose(error(64), best, atol=1e-5)
    assert error(64).mean() < error(4).mean() < error(1).mean()
    assert torch.equal(rvq.encode(z, 4, chunk=7), rvq.encode(z, 4))  # chunks change nothing


def test_kmeans_codes_a_few_distinct_points_exactly():
    """Four distinct points, each 50 times, and four codes: k-means gives each its own code,
    so one codebook reconstructs every vector exactly (its code is that point)."""
    points = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    z = points.repeat(50, 1)
    rvq = ResidualVQ(1, 4, 2)
    rvq.fit(z, iters=20, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(rvq.decode(rvq.encode(z)), z)


def test_each_codebook_lowers_the_quantisation_error():
    rvq = ResidualVQ(N_CODEBOOKS, CODEBOOK_SIZE, 8)
    z = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))  # more vectors than codes
    rvq.fit(z, iters=5, generator=torch.Generator().manual_seed(0), progress=False)
    residual, errors = z.clone(), []
    for codebook in rvq.codebooks:
        residual = residual - codebook[rvq.nearest(residual, codebook)]
        errors.append(residual.pow(2).mean().item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0]
    torch.testing.assert_close(rvq.decode(rvq.encode(z)), z - residual)


# ---------------------------------------------------------------------------------------------- fitting
def test_fitted_codec_reconstructs_its_clips(tmp_path, trained):
    """The micro codec's magnitudes of its own training tones against their true |STFT|: a
    relative error far below an unfitted codec's (whose codes all decode to nothing), and
    the semantic part gives the teacher's features back better than their mean does."""
    codec, out = trained
    wav = torch.from_numpy(np.stack(tones(16)[:4]))
    true = stft_frames(wav).abs()
    error = lambda c: float(torch.linalg.norm(c.magnitude(c.encode(wav)) - true) / torch.linalg.norm(true))
    assert error(codec) < 0.5 < 0.99 < error(Codec(MICRO))
    result = evaluate_codec(codec, [(w.numpy(), []) for w in wav])
    assert result["semantic_error"] < 0.5
    assert (out / "codec.pt").is_file() and not (out / "codec.pt.tmp").exists()


def test_fitting_is_deterministic(tmp_path):
    runs = [train_codec(tmp_path / str(k), tones(4), MICRO, seed=7, progress=False) for k in range(2)]
    wav = torch.from_numpy(tones(1, seed=3)[0])[None]
    assert torch.equal(runs[0].encode(wav), runs[1].encode(wav))


def test_evaluate_codec_on_world_clips(trained):
    result = evaluate_codec(trained[0], world_clips(0, range(2)))
    assert result["log_mel_distance"] > 0 and result["semantic_error"] >= 0
    for name in ("original", "reconstruction"):
        assert set(result[name]) == {"events", "layout", "counts", "pitch", "score"}
        assert all(0 <= v <= 1 for v in result[name].values())


def test_error_budget_against_a_direct_computation(trained):
    """The curve's last row is the codes' own error, its parts add up, and noise of scale 0
    scores what the projection onto the axes and back scores, computed here by hand."""
    codec, clips = trained[0], world_clips(0, range(2))
    budget = error_budget(codec, clips, scales=(0.0, 1.0))
    errors = []
    for wav, _ in clips:
        x = codec._frames(torch.from_numpy(wav)[None])
        z = codec.coordinates(codec.compress(x), codec.teacher(x))[0]
        errors.append((codec.quantizer.decode(codec.encode(x)[0].T) - z).pow(2).sum(1))
    last = budget["curve"][-1]
    assert [row["codebooks"] for row in budget["curve"]] == list(range(1, N_CODEBOOKS + 1))
    assert math.isclose(last["total"], float(torch.cat(errors).mean()), rel_tol=1e-4)
    assert math.isclose(last["leading"] + last["trailing"] + last["semantic"], last["total"], rel_tol=1e-5)
    wider = Codec(MICRO)  # more frames than codes, so that codebooks 2..8 have residuals to fit
    wider.fit(tones(48), torch.Generator().manual_seed(0), progress=False)
    curve = error_budget(wider, [(w, []) for w in tones(4, seed=9)], scales=())["curve"]  # unseen tones
    assert curve[0]["total"] > 1.5 * curve[-1]["total"]
    scores = []
    for wav, truth in clips:
        x = codec._frames(torch.from_numpy(wav)[None])
        compressed = stft_frames(x).abs().pow(MICRO.power)[0].T  # [T, 641]
        projected = ((compressed - codec.mean) @ codec.basis.T @ codec.basis + codec.mean).clamp(min=0)
        y = griffin_lim(projected.pow(1 / MICRO.power).T[None])[0, :len(wav)]
        scores.append(adherence(analyze(y.numpy()), truth)["score"])
    assert budget["noisy"][0.0] == np.mean(scores)
    assert 0 <= budget["noisy"][1.0] <= 1
    assert budget["leading_axes"] == MICRO.n_components  # 64 asked, the micro preset has 32 axes


# ---------------------------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tmp_path, trained):
    codec, _ = trained
    save_checkpoint(tmp_path / "c.pt", codec, step=1)
    loaded = Codec.from_checkpoint(tmp_path / "c.pt", config=MICRO)
    wav = torch.from_numpy(np.stack(tones(2, seed=5)))
    codes = codec.encode(wav)
    assert torch.equal(loaded.encode(wav), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_bad_checkpoints_fail_clearly(tmp_path, trained):
    codec, _ = trained
    path = tmp_path / "c.pt"
    save_checkpoint(path, codec, step=1)
    with pytest.raises(ValueError, match="differs from the requested"):
        Codec.from_checkpoint(path, config=CodecConfig())
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["n_components"] = 16  # config no longer matches the weights
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="do not fit the saved config"):
        Codec.from_checkpoint(tmp_path / "edited.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["semantic_share"]  # as a codec fitted before that field existed
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="older version of this code .* no semantic_share"):
        Codec.from_checkpoint(tmp_path / "old.pt")
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable codec checkpoint"):
        Codec.from_checkpoint(tmp_path / "corrupt.pt")
    with pytest.raises(FileNotFoundError, match="no codec checkpoint"):
        Codec.from_checkpoint(tmp_path / "missing.pt")
