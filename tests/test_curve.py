"""curve.py: the hand-written PNG against Pillow's decoder, the plot's grid, and the whole
tool on a tiny trained run (a kept checkpoint -> curve.md and curve.png)."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import curve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_png_bytes_decode_to_the_same_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (7, 13, 3), dtype=np.uint8)  # odd sizes
    decoded = np.asarray(Image.open(io.BytesIO(curve.png_bytes(pixels))).convert("RGB"))
    np.testing.assert_array_equal(decoded, pixels)


def test_plot_puts_points_where_the_axes_say():
    img = curve.plot([0, 60], {"a": ([0.0, 1.0], (200, 40, 40))}, width=200, height=150, margin=20)
    assert img.shape == (150, 200, 3)
    red = (img == [200, 40, 40]).all(-1)
    assert red[150 - 20, 20] and red[20, 200 - 20]  # (0 min, 0%) bottom left, (60 min, 100%) top right
    assert red[(150 - 20 + 20) // 2, (20 + 180) // 2]  # the line passes through the middle


def test_kept_checkpoints_sorts_by_step(tmp_path):
    for name in ("gen_step000900.pt", "gen_step000100.pt", "gen.pt", "sft_step000100.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [s for s, _ in curve.kept_checkpoints(str(tmp_path), "gen")] == [100, 900]


@pytest.mark.usefixtures("one_thread")
def test_curve_tool_on_a_tiny_run(tiny_run):
    runs = tiny_run / "runs"
    shutil.copy(runs / "gen.pt", runs / "gen_step000002.pt")
    try:
        r = subprocess.run([sys.executable, "curve.py", "--ckpt_dir", str(runs), "--data", str(tiny_run / "toy"),
                            "--n_eval", "2", "--n_gen", "2", "--seeds", "1"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        table = [line for line in (runs / "curve.md").read_text().splitlines() if line.startswith("| 2 |")]
        assert len(table) == 1 and "+- nan" not in table[0]  # one seed: no spread over seeds to show
        assert Image.open(runs / "curve.png").size == (640, 400)
        # run again: the scored point is read back from curve_points.json, not sampled again
        # (its checkpoint is made unreadable, so scoring it again would fail)
        stamp = os.stat(runs / "gen_step000002.pt")
        (runs / "gen_step000002.pt").write_bytes(b"not a checkpoint")
        os.truncate(runs / "gen_step000002.pt", stamp.st_size)  # the same size and time: taken as the same file
        os.utime(runs / "gen_step000002.pt", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        again = subprocess.run([sys.executable, "curve.py", "--ckpt_dir", str(runs), "--data",
                                str(tiny_run / "toy"), "--n_eval", "2", "--n_gen", "2", "--seeds", "1"], cwd=ROOT,
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert again.returncode == 0, again.stderr[-2000:]
        assert (runs / "curve.md").read_text().splitlines()[4] == table[0]
        other = subprocess.run([sys.executable, "curve.py", "--ckpt_dir", str(runs), "--data",  # other settings
                                str(tiny_run / "toy"), "--n_eval", "2", "--n_gen", "1", "--seeds", "1"], cwd=ROOT,
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert other.returncode != 0 and "gen_step000002.pt" in other.stderr  # scored anew: the file is read
    finally:
        for name in ("gen_step000002.pt", "curve_points.json"):
            if os.path.exists(runs / name):
                os.remove(runs / name)


def test_curve_without_kept_checkpoints_says_how(tmp_path):
    r = subprocess.run([sys.executable, "curve.py", "--ckpt_dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode != 0 and "--keep_every" in r.stderr and "Traceback" not in r.stderr
