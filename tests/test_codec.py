"""codec.py: Griffin-Lim on a sine, the
principal axes against numpy's SVD, the RVQ against a brute-force search and on points it
must code exactly, shapes and rates, a micro fit, and checkpoints that load exactly or
fail clearly."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

import model
from codec import (CODEBOOK_SIZE, CODEC_PRESETS, HOP, LOG_FLOOR, N_BINS, N_CODEBOOKS, N_FFT, RESOLUTIONS, SAMPLE_RATE,
                   Codec, CodecConfig, error_budget, evaluate_codec, griffin_lim, principal_axes, save_checkpoint,
                   stft_frames, teacher_features, train_codec, world_clips)
from checkpoint import load_ckpt, save_ckpt
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


def numpy_log_mel_distance(y: np.ndarray, x: np.ndarray) -> float:
    """spectral_losses' 'mel' computed independently: numpy frames (reflect-padded, centred,
    periodic Hann from scipy, hop n_fft / 4), transformers' Slaney mel bank with each
    triangle's peak at 1, L1 of log10(mel + LOG_FLOOR), mean over RESOLUTIONS."""
    from scipy.signal import get_window
    from transformers.audio_utils import mel_filter_bank

    total = 0.0
    for n_fft, n_mels in RESOLUTIONS:
        window = get_window("hann", n_fft)  # periodic (fftbins=True), as torch.hann_window

        def mel(w):
            padded = np.pad(np.asarray(w, np.float64), n_fft // 2, mode="reflect")
            frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::n_fft // 4]
            bank = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                                   max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm=None,
                                   mel_scale="slaney")
            return np.log10(bank.T @ np.abs(np.fft.rfft(frames * window, axis=-1)).T + LOG_FLOOR)

        total += np.abs(mel(y) - mel(x)).mean()
    return total / len(RESOLUTIONS)


class StubCodec:
    """What evaluate_codec asks of a codec, with the decode and the decoded teacher features
    chosen by the test: the "codes" are the waveform itself."""
    _frames = staticmethod(Codec._frames)
    teacher = staticmethod(lambda wav: teacher_features(wav).transpose(1, 2))  # the log-mel teacher

    def __init__(self, decode, semantic):
        self.decode, self.semantic = decode, semantic

    def encode(self, wav):
        return wav


def test_evaluate_codec_on_world_clips(trained):
    """evaluate_codec against numbers computed here: the analyzer's scores of the originals
    and of each reconstruction (toy.analyzer called directly), a numpy log-mel distance,
    and stub codecs with known answers: a perfect one (distance 0, semantic error 0, the
    reconstruction scores the original's), a silent one that decodes the teachers' mean
    features (semantic error 1, distance to silence), and a half-amplitude one whose
    features are off by 0.5 everywhere (semantic error 0.25 x frames x 128 / variance)."""
    clips = world_clips(0, range(2))
    wavs = [torch.from_numpy(w)[None] for w, _ in clips]
    taught = torch.cat([StubCodec.teacher(Codec._frames(w))[0] for w in wavs]).double()  # [frames, 128]
    spread = float((taught - taught.mean(0)).pow(2).sum())

    def scores(outputs):  # the analyzer's mean adherence over the clips, per key
        rows = [adherence(analyze(y), truth) for y, (_, truth) in zip(outputs, clips)]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    original = scores([w for w, _ in clips])
    assert set(original) == {"events", "layout", "counts", "pitch", "score"} and original["score"] == 1.0

    features = lambda w: teacher_features(Codec._frames(w))  # [1, 128, T]
    perfect = evaluate_codec(StubCodec(lambda w: w, features), clips)
    assert perfect["log_mel_distance"] == 0.0 and perfect["semantic_error"] == 0.0
    assert perfect["original"] == perfect["reconstruction"] == original

    mean = taught.mean(0).float()
    silent = evaluate_codec(StubCodec(torch.zeros_like, lambda w: mean[None, :, None].expand_as(features(w))), clips)
    assert silent["semantic_error"] == pytest.approx(1.0, rel=1e-5)
    want = np.mean([numpy_log_mel_distance(np.zeros_like(w), w) for w, _ in clips])
    assert silent["log_mel_distance"] == pytest.approx(want, rel=1e-4) and want > 0.3
    assert silent["original"] == original
    assert silent["reconstruction"] == scores([np.zeros_like(w) for w, _ in clips]) != original

    half = evaluate_codec(StubCodec(lambda w: 0.5 * w, lambda w: features(w) + 0.5), clips)
    assert half["semantic_error"] == pytest.approx(0.25 * taught.numel() / spread, rel=1e-4)
    want = np.mean([numpy_log_mel_distance(0.5 * w, w) for w, _ in clips])
    assert half["log_mel_distance"] == pytest.approx(want, rel=1e-4) and 0.05 < want < np.log10(2)
    assert half["reconstruction"] == scores([0.5 * w for w, _ in clips])

    codec = trained[0]  # the fitted micro codec: its own round trip, scored here
    result = evaluate_codec(codec, clips)
    outputs = [codec.decode(codec.encode(w))[0, :w.shape[-1]].numpy() for w in wavs]
    assert result["original"] == original and result["reconstruction"] == scores(outputs)
    want = np.mean([numpy_log_mel_distance(y, w) for y, (w, _) in zip(outputs, clips)])
    assert result["log_mel_distance"] == pytest.approx(want, rel=1e-4)
    decoded = torch.cat([codec.semantic(codec.encode(w))[0].T for w in wavs]).double()
    assert result["semantic_error"] == pytest.approx(float((decoded - taught).pow(2).sum()) / spread, rel=1e-4)


def test_error_budget_against_a_direct_computation(trained):
    """error_budget's curve against a greedy residual search written here in numpy (float64
    distances, each codebook's nearest row subtracted in turn, the rows summed by hand): with
    beam 1 the codes of the first k codebooks are the first k of the 8, so row k is the
    squared error the hand-written search leaves after k codebooks, split at the leading
    axes. The codebooks are random, at shrinking scales, so every row differs. With the
    default beam, row 1 is still greedy and row 8 is the error of the codec's own codes
    summed here. noisy: the clips' coordinates plus Gaussian noise of the last row's
    per-axis variance (the same seeded draws), projected back and decoded here by hand."""
    clips = world_clips(0, range(2))
    greedy = copy.deepcopy(trained[0])
    greedy.config = dataclasses.replace(greedy.config, beam=1)
    wavs = [Codec._frames(torch.from_numpy(w)[None]) for w, _ in clips]
    coords = [greedy.coordinates(greedy.compress(w), greedy.teacher(w))[0] for w in wavs]
    z = torch.cat(coords).double().numpy()  # [frames, 36]
    g = torch.Generator().manual_seed(0)
    scale = torch.from_numpy(z.std(0)).float()
    greedy.quantizer.codebooks.copy_(torch.stack([torch.randn(CODEBOOK_SIZE, z.shape[1], generator=g) * scale
                                                  * 0.7 ** k for k in range(N_CODEBOOKS)]))
    books = greedy.quantizer.codebooks.double().numpy()

    residual, want = z.copy(), []
    K, lead = MICRO.n_components, 20
    for k in range(N_CODEBOOKS):
        d = (residual ** 2).sum(1)[:, None] - 2 * residual @ books[k].T + (books[k] ** 2).sum(1)[None]
        residual = residual - books[k][d.argmin(1)]
        variance = (residual ** 2).mean(0)
        want.append({"codebooks": k + 1, "total": variance.sum(), "leading": variance[:lead].sum(),
                     "trailing": variance[lead:K].sum(), "semantic": variance[K:].sum()})
    budget = error_budget(greedy, clips, scales=(0.5,), leading=lead)
    assert budget["leading_axes"] == lead
    assert len(budget["curve"]) == N_CODEBOOKS
    for got, row in zip(budget["curve"], want):
        assert got["codebooks"] == row["codebooks"]
        for key in ("total", "leading", "trailing", "semantic"):
            assert got[key] == pytest.approx(row[key], rel=1e-4, abs=1e-6), (row["codebooks"], key)
    assert want[0]["total"] > 1.2 * want[-1]["total"] and want[-1]["trailing"] > 0 and want[-1]["semantic"] > 0

    generator, scores = torch.Generator().manual_seed(0), []
    for (wav, truth), c in zip(clips, coords):
        vectors = c + torch.randn(c.shape, generator=generator) * torch.from_numpy(0.5 * variance).float().sqrt()
        compressed = (vectors[:, :K] @ greedy.basis + greedy.mean).clamp(min=0)  # [T, 641]
        y = griffin_lim(compressed.pow(1 / MICRO.power).T[None])[0, :len(wav)]
        scores.append(adherence(analyze(y.numpy()), truth)["score"])
    assert budget["noisy"] == pytest.approx({0.5: np.mean(scores)})

    beam = copy.deepcopy(greedy)
    beam.config = MICRO  # beam 8
    first = error_budget(beam, clips[:1], scales=())["curve"]  # one clip's
    c = coords[0].double().numpy()
    nearest = ((c ** 2).sum(1)[:, None] - 2 * c @ books[0].T + (books[0] ** 2).sum(1)[None]).min(1)
    assert first[0]["total"] == pytest.approx(nearest.mean(), rel=1e-4)  # one codebook: the nearest row
    codes = beam.encode(wavs[0])[0].numpy()  # [8, T]
    summed = sum(books[k][codes[k]] for k in range(N_CODEBOOKS))
    assert first[-1]["total"] == pytest.approx(((summed - c) ** 2).sum(1).mean(), rel=1e-4)


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
    ckpt = load_ckpt(path, "Codec", "")
    ckpt["config"]["n_components"] = 16  # config no longer matches the weights
    save_ckpt(tmp_path / "edited.pt", ckpt)
    with pytest.raises(ValueError, match="do not fit the saved config"):
        Codec.from_checkpoint(tmp_path / "edited.pt")
    ckpt = load_ckpt(path, "Codec", "")
    del ckpt["config"]["semantic_share"]  # as a codec fitted before that field existed
    save_ckpt(tmp_path / "old.pt", ckpt)
    with pytest.raises(ValueError, match="older version of this code .* no semantic_share"):
        Codec.from_checkpoint(tmp_path / "old.pt")
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt.pt is not a readable Codec checkpoint .*python codec.py --out DIR"):
        Codec.from_checkpoint(tmp_path / "corrupt.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt not found: run `python codec.py --out DIR`"):
        Codec.from_checkpoint(tmp_path / "missing.pt")


def test_encoder_teacher_hears_through_the_tower(tmp_path):
    """The "encoder" teacher (toy-semantic): codec frame t gets the tower's 25 Hz frame t // 2,
    computed here with AudioEncoder.listen directly; fit copies the tower's weights in and
    refuses to run without one; the tower travels in codec.pt and reloads to the same codes."""
    from encoder import ENCODER_PRESETS, AudioEncoder
    torch.manual_seed(0)
    tower = AudioEncoder(ENCODER_PRESETS["toy"]).eval()
    config = dataclasses.replace(CODEC_PRESETS["micro"], teacher="encoder", semantic_share=1.0)
    clips = [w for w, _ in world_clips(0, range(3))]
    with pytest.raises(ValueError, match="teacher"):
        Codec(config).fit(clips, torch.Generator().manual_seed(0), progress=False)
    codec = train_codec(tmp_path, clips, config, progress=False, teacher=tower)
    wav = Codec._frames(torch.from_numpy(clips[0])[None])  # [1, 320 T]
    T = wav.shape[-1] // HOP
    with torch.no_grad():
        feats, _ = tower.listen([wav[0]])  # [1, T25, 128]
    idx = torch.arange(T) // 2
    want = torch.zeros(T, 128)  # a last odd frame past the tower's hears silence
    want[idx < feats.shape[1]] = feats[0, idx[idx < feats.shape[1]]]
    torch.testing.assert_close(codec.teacher(wav)[0], want)
    again = Codec.from_checkpoint(tmp_path / "codec.pt")
    assert torch.equal(again.encode(wav), codec.encode(wav))
