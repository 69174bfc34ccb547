import os

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
