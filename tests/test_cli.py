"""Bad input on the command line: one sentence on stderr that names the fix, exit status 1,
no traceback, and nothing written. The flags are checked before anything is loaded, so
these need no trained run."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from data import load_audio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, argv, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("argv, says", [
    (["--cfg", "-1"], "--cfg -1: give a guidance scale of 0 or more"),
    (["--top_k", "0"], "--top_k 0: give 1 or more"),
    (["--temperature", "-0.5"], "--temperature -0.5: give 0"),
    (["--num_samples", "0"], "--num_samples 0: give 1 or more"),
    (["--max_seconds", "0"], "--max_seconds 0: give a length above 0"),
    (["--max_seconds", "nan"], "--max_seconds nan: give a length above 0"),
    (["--max_seconds", "inf"], "--max_seconds inf: give a finite number of seconds"),
    (["--out", "clip.mp3"], "name a .wav or .flac file"),
])
def test_sample_flags_out_of_range(argv, says, tmp_path):
    r = run("sample.py", ["--prompt", "a bell", *argv], tmp_path)
    assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, says", [
    (["--stage", "gen", "--resume"], "gen.pt does not exist; run without --resume"),
    (["--stage", "all", "--resume"], "drop --resume"),
    (["--stage", "codec", "--resume"], "not --stage codec; drop --resume"),
    (["--stage", "gen", "--cb1_weight", "1.5"], "--cb1_weight 1.5: give a share between 0 and 1"),
    (["--stage", "gen", "--input_noise", "1"], "--input_noise 1: give a share from 0 up to"),
])
def test_train_flags_refused_before_anything_is_made(argv, says, tmp_path):
    r = run("train.py", [*argv, "--out", str(tmp_path / "runs"), "--data", str(tmp_path / "none")], tmp_path)
    assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()  # nothing made, nothing started


def test_audio_with_nan_samples_is_refused(tmp_path):
    x = np.zeros(1600, dtype=np.float32)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN or infinite samples"):
        load_audio(tmp_path / "nan.wav")
    sf.write(tmp_path / "ok.wav", np.zeros(1600, dtype=np.float32), 16000, subtype="FLOAT")
    assert load_audio(tmp_path / "ok.wav").shape == (1600,)  # an ordinary file still loads
