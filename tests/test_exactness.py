"""The two AISHELL-1 recipes at real size on real speech: engines (CPU, fp32) against reference.py."""

import pytest

from runtime.audio import load_audio
from runtime.frontend import fbank
from tests.conftest import WAVS, sample_flacs
from tests.reference_check import check_batch_independence, check_engine_against_reference


@pytest.fixture(scope="module")
def real_feats():
    return [fbank(load_audio(p)) for p in WAVS + sample_flacs(5)]


@pytest.mark.parametrize("recipe", ["conformer", "u2pp"])
def test_real_size_recipe_matches_reference(random_models, real_feats, recipe):
    model_dir, engine_dir = random_models[recipe]
    check_engine_against_reference(model_dir, engine_dir, real_feats, beam_size=10, ctc_weight=0.5,
                                   reverse_weight=0.3 if recipe == "u2pp" else 0.0)


@pytest.mark.parametrize("recipe", ["conformer", "u2pp"])
def test_real_size_results_do_not_depend_on_the_batch(random_models, real_feats, recipe):
    check_batch_independence(random_models[recipe][1], real_feats[:5], beam_size=4)
