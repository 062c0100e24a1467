import os
import subprocess
import sys

import pytest
import torch

# the project is flat: make `import model`, `import codec`, ... work from tests/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY_RUN_STAGES = [  # train.py's stages at their smallest: a run sample.py can load, in about half a minute
    ["--stage", "codec", "--codec_preset", "micro"],
    ["--stage", "vae", "--vae_preset", "micro", "--vae_steps", "2", "--vae_clips", "2"],
    ["--stage", "clap", "--clap_steps", "2", "--clap_batch", "4"],
    ["--stage", "gen", "--steps", "2", "--warmup", "1", "--eval_every", "0", "--rows", "1", "--budget", "600"],
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny trained run, made once per session: a 10-clip world (data.py, the last 2 held
    out) and train.py's codec (micro), vae (micro, 2 steps), clap (2 steps) and gen (2 steps)
    stages. -> the folder holding toy/ (the world) and runs/ (codec.pt, vae.pt, clap.pt,
    gen.pt, tokenizer/)."""
    root = tmp_path_factory.mktemp("tiny_run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [["data.py", "--out", str(root / "toy"), "--n", "10", "--workers", "1"]]
    commands += [["train.py", *stage, "--data", str(root / "toy"), "--out", str(root / "runs"), "--n_eval", "2",
                  "--vocab_size", "400", "--device", "cpu"] for stage in TINY_RUN_STAGES]
    for cmd in commands:
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}"
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Models this small run faster on one thread: starting and syncing threads costs more than
    the math. Modules of tiny models use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
