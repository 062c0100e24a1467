"""The codebase's shape: imports flow one way, in the order a reader meets the files.

Every module may import only the modules listed before it in READING_ORDER (any import,
also one inside a function), so there is no cycle and a reader can go top to bottom:
shared helpers and the toy world, the components, sequences and tasks, sampling, the
training stages, then reasoning and the tools."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READING_ORDER = [
    "utils", "toy.world", "toy.analyzer", "data", "tokenizer", "checkpoint",  # shared helpers, the toy world
    "encoder", "rvq", "codec", "hubert", "xcodec", "vae", "clap", "xcodec_train", "model",  # the components
    "parts",  # which codec, ears and backbone a run is made of
    "sequences", "tasks",  # conversations -> training grids
    "sample",  # generation
    "dpo", "train",  # training (train.py runs every stage, dpo.py's too)
    "reason", "eval", "curve", "bench", "bench_gpu",  # the reasoning loop and the tools
]


def project_imports(path):
    """The project modules a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from toy import world`
    return {n for n in names if n in READING_ORDER}


def test_every_module_is_in_the_reading_order():
    files = {p.stem for p in ROOT.glob("*.py")} | {f"toy.{p.stem}" for p in ROOT.glob("toy/*.py")}
    assert files - {"toy.__init__"} == set(READING_ORDER)


def test_imports_flow_one_way():
    for i, name in enumerate(READING_ORDER):
        later = project_imports(ROOT / (name.replace(".", "/") + ".py")) - set(READING_ORDER[:i])
        assert not later, f"{name} imports {sorted(later)}, which come after it"
