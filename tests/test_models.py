"""Small WeNet variants of every layer option, engines (CPU fp32) against reference.py."""

import os

import pytest
import torch

from build import build_engines
from models.wenet.networks import Profiles
from runtime.audio import load_audio
from runtime.frontend import fbank
from tests.conftest import SHARED, WAVS, sample_flacs
from tests.reference_check import check_batch_independence, check_engine_against_reference
from tools.make_random_model import write_random_model

TINY_ENCODER = {"output_size": 32, "attention_heads": 2, "linear_units": 48, "num_blocks": 2, "input_layer": "conv2d",
                "cnn_module_kernel": 5, "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn",
                "dropout_rate": 0.1}
TINY_DECODER = {"attention_heads": 2, "linear_units": 48, "num_blocks": 2, "dropout_rate": 0.1}
VARIANTS = {
    "conv2d_batchnorm_transformer_old_yaml": (
        {"cmvn_file": "global_cmvn", "is_json_cmvn": True, "decoder": "transformer"}, {}, {}, "last"),
    "conv2d6_causal_layernorm_bitransformer": (
        {"decoder": "bitransformer", "cmvn": "global_cmvn", "cmvn_conf": {"cmvn_file": "x/global_cmvn"},
         "tokenizer_conf": {"special_tokens": {"<blank>": 0, "<unk>": 1, "<sos>": 2, "<eos>": 2}}},
        {"input_layer": "conv2d6", "causal": True, "cnn_module_kernel": 4, "cnn_module_norm": "layer_norm"},
        {"r_num_blocks": 1}, "2"),
    "conv2d8_abs_pos_no_macaron": (
        {"cmvn_file": "global_cmvn", "decoder": "bitransformer"},
        {"input_layer": "conv2d8", "pos_enc_layer_type": "abs_pos", "selfattention_layer_type": "selfattn",
         "macaron_style": False, "cnn_module_kernel": 3},
        {"r_num_blocks": 2}, "last"),
}


def tiny_vocab(sos_position: str) -> list[str]:
    chars = [chr(0x4E00 + i) for i in range(27)]
    return ["<blank>", "<unk>", "<sos/eos>", *chars] if sos_position == "2" else ["<blank>", "<unk>", *chars, "<sos/eos>"]


@pytest.fixture(scope="module")
def feats():
    return [fbank(load_audio(p)) for p in WAVS + sample_flacs(3)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_small_variant_matches_reference(tmp_path, feats, variant):
    top, encoder, decoder, sos_position = VARIANTS[variant]
    vocab = tiny_vocab(sos_position)
    conf = {"input_dim": 80, "output_dim": len(vocab), "encoder": "conformer", **top,
            "encoder_conf": {**TINY_ENCODER, **encoder}, "decoder_conf": {**TINY_DECODER, **decoder},
            "model_conf": {"ctc_weight": 0.3, "reverse_weight": 0.3}}
    model_dir = write_random_model(str(tmp_path / "model"), conf, vocab, os.path.join(SHARED, "aishell1", "global_cmvn"),
                                   seed=7, legacy_keys=sos_position == "last", position_tables=sos_position == "2")
    engine_dir = str(tmp_path / "engine")
    build_engines(model_dir, engine_dir, "float32", Profiles(max_batch_size=8, max_seconds=12, beam_size=6))
    check_engine_against_reference(model_dir, engine_dir, feats, beam_size=5)
    check_batch_independence(engine_dir, feats[:4], beam_size=3)


def test_reference_leaks_padding_but_engines_do_not(random_models, feats):
    """WeNet's non-causal conv module lets a batch's padding leak into shorter utterances' last frames."""
    from runtime.transcriber import Transcriber
    from tests.reference_check import load_reference

    model_dir, engine_dir = random_models["conformer"]
    reference = load_reference(model_dir)
    short, long = feats[3], feats[2]
    batch = torch.zeros(2, long.shape[0], 80)
    batch[0, :short.shape[0]], batch[1] = short, long
    lengths = torch.tensor([short.shape[0], long.shape[0]])
    batched, lens, _, _ = reference.encode(batch, lengths)
    alone, _, _, _ = reference.encode(short[None], lengths[:1])
    n = int(lens[0])
    assert (batched[0, :n] - alone[0]).abs().max() > 1e-3  # the leak exists in WeNet's numerics
    enc = Transcriber(engine_dir).encoding.encode([short, long])
    assert (enc.encoder_out[0, :n] - alone[0]).abs().max() < 1e-4
