import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("WENET_TRT_SHARED_DATA") or os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
WAVS = sorted(os.path.join(SHARED, "wavs", f) for f in os.listdir(os.path.join(SHARED, "wavs")) if f.endswith(".wav"))


def sample_flacs(n: int) -> list[str]:
    """``n`` real Mandarin utterances of spread-out lengths from the aishell sample."""
    folder = os.path.join(SHARED, "aishell_sample", "flac")
    files = sorted(os.listdir(folder))
    step = max(1, len(files) // n)
    return [os.path.join(folder, f) for f in files[::step][:n]]


def compiled_variants(kernel) -> int:
    """How many variants of a Triton kernel have been compiled in this process (on every device)."""
    return sum(len(cache[0]) for cache in kernel.device_caches.values())


def under_triton_interpreter(expression: str, module: str):
    """The JSON value of ``expression`` evaluated in a child process with ``TRITON_INTERPRET=1``, where ``module`` (a
    test module) is imported as ``t``: the interpreter must be set before Triton compiles anything, so the CPU runs of
    the Triton kernels cannot share this process."""
    code = f"import json, {module} as t; print(json.dumps({expression}))"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def random_models(tmp_path_factory):
    """Real-size random-weight model dirs of both AISHELL-1 recipes, with fp32 CPU engines built."""
    from build import build_engines
    from models.wenet.networks import Profiles
    from tools.make_random_model import make_random_model

    root = tmp_path_factory.mktemp("models")
    out = {}
    for recipe in ("conformer", "u2pp"):
        model_dir = make_random_model(recipe, str(root / recipe))
        engine_dir = str(root / f"{recipe}_engine")
        build_engines(model_dir, engine_dir, "float32", Profiles(max_batch_size=8, max_seconds=20))
        out[recipe] = (model_dir, engine_dir)
    return out
