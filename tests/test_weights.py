"""Model-dir reading: train.yaml eras, CMVN formats, vocabularies, exhaustive key accounting, BN folding."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from core.dtype import DataType
from models.wenet.config import ConfigError, load_config
from models.wenet.model import WeNetModel
from weights.files import ModelFileError, load_cmvn, load_vocab, read_model_dir
from weights.mapping import WeightMappingError, load_weights, map_checkpoint


def test_old_and_new_yaml_eras(random_models):
    old = load_config(os.path.join(random_models["conformer"][0], "train.yaml"))
    assert (old.sos, old.eos, old.vocab_size) == (4232, 4232, 4233)
    assert old.cmvn_file == "global_cmvn" and old.decoder.kind == "transformer"
    assert old.encoder.cnn_module_norm == "batch_norm" and not old.encoder.causal
    new = load_config(os.path.join(random_models["u2pp"][0], "train.yaml"))
    assert (new.sos, new.eos) == (2, 2)
    assert new.cmvn_file == "data/train/global_cmvn" and new.decoder.kind == "bitransformer"
    assert new.encoder.causal and new.encoder.cnn_module_kernel == 8 and new.reverse_weight == 0.3


def test_unsupported_yaml_is_a_clear_error(tmp_path, random_models):
    conf = yaml.safe_load(open(os.path.join(random_models["u2pp"][0], "train.yaml")))
    conf["encoder_conf"]["layer_norm_type"] = "rms_norm"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(conf))
    with pytest.raises(ConfigError, match="layer_norm_type='rms_norm' is not supported"):
        load_config(str(path))
    conf["encoder_conf"].pop("layer_norm_type")
    conf["encoder_conf"]["made_up_option"] = 1
    path.write_text(yaml.safe_dump(conf))
    with pytest.raises(ConfigError, match="made_up_option"):
        load_config(str(path))


def test_cmvn_json_and_kaldi_text_agree(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.normal(3.0, 2.0, size=(500, 80))
    stats = {"mean_stat": frames.sum(0).tolist(), "var_stat": (frames ** 2).sum(0).tolist(), "frame_num": 500}
    (tmp_path / "cmvn.json").write_text(json.dumps(stats))
    kaldi = "[\n " + " ".join(map(str, stats["mean_stat"])) + " 500\n " + " ".join(map(str, stats["var_stat"])) + " 0 ]"
    (tmp_path / "cmvn.txt").write_text(kaldi)
    mean, istd = load_cmvn(str(tmp_path / "cmvn.json"))
    np.testing.assert_allclose(mean, frames.mean(0))
    np.testing.assert_allclose(istd, 1 / frames.std(0))
    mean2, istd2 = load_cmvn(str(tmp_path / "cmvn.txt"), is_json=False)
    np.testing.assert_allclose(mean2, mean, rtol=1e-6)
    np.testing.assert_allclose(istd2, istd, rtol=1e-6)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ModelFileError, match="bad.json: malformed"):
        load_cmvn(str(tmp_path / "bad.json"))


def test_vocab_errors_name_the_line(tmp_path):
    (tmp_path / "units.txt").write_text("<blank> 0\na 1\nb 3\n")
    with pytest.raises(ModelFileError, match="ids are not 0..2"):
        load_vocab(str(tmp_path / "units.txt"))
    (tmp_path / "units.txt").write_text("<blank> 0\nno_id\n")
    with pytest.raises(ModelFileError, match=r"units.txt:2: expected 'symbol id'"):
        load_vocab(str(tmp_path / "units.txt"))


def copy_model(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_missing_and_unexpected_keys_are_named(tmp_path, random_models):
    model_dir = copy_model(random_models["u2pp"][0], tmp_path / "m")
    ckpt = read_model_dir(model_dir)
    model = WeNetModel(ckpt.config, DataType.float32, 1000)
    state = dict(ckpt.state)
    del state["decoder.right_decoder.decoders.1.src_attn.linear_v.bias"]
    state["encoder.encoders.3.mystery.weight"] = torch.zeros(3)
    with pytest.raises(WeightMappingError) as e:
        map_checkpoint(state, model, ckpt.cmvn)
    assert "decoder.right_decoder.decoders.1.src_attn.linear_v.bias" in str(e.value)
    assert "encoder.encoders.3.mystery.weight" in str(e.value)
    state = dict(ckpt.state)
    state["ctc.ctc_lo.bias"] = torch.zeros(17)
    with pytest.raises(WeightMappingError, match=r"ctc.ctc_lo.bias: checkpoint shape \[17\], model expects \[4233\]"):
        map_checkpoint(state, model, ckpt.cmvn)


def test_every_checkpoint_tensor_is_used_or_known_unused(random_models):
    for recipe in ("conformer", "u2pp"):
        ckpt = read_model_dir(random_models[recipe][0])
        model = WeNetModel(ckpt.config, DataType.float32, 1000)
        values = map_checkpoint(ckpt.state, model, ckpt.cmvn)
        assert set(values) == {n for n, _ in model.named_parameters()}
        load_weights(model, values)
        unused = {k for k in ckpt.state if k not in values}
        if recipe == "conformer":  # BN folded into the depthwise conv; legacy keys
            assert all(".conv_module.norm." in k or "concat_linear" in k or k.endswith("depthwise_conv.weight")
                       or k.endswith("depthwise_conv.bias") for k in unused)
            assert any("concat_linear" in k for k in unused)
        else:
            assert unused == {"encoder.embed.pos_enc.pe", "decoder.left_decoder.embed.1.pe",
                              "decoder.right_decoder.embed.1.pe"}


def test_batch_norm_folding_is_exact(random_models):
    ckpt = read_model_dir(random_models["conformer"][0])
    model = WeNetModel(ckpt.config, DataType.float32, 1000)
    values = map_checkpoint(ckpt.state, model, ckpt.cmvn)
    prefix = "encoder.encoders.5.conv_module"
    x = torch.randn(2, 256, 40)
    conv = torch.nn.functional.conv1d(x, ckpt.state[f"{prefix}.depthwise_conv.weight"],
                                      ckpt.state[f"{prefix}.depthwise_conv.bias"], padding=7, groups=256)
    bn = torch.nn.functional.batch_norm(conv, ckpt.state[f"{prefix}.norm.running_mean"],
                                        ckpt.state[f"{prefix}.norm.running_var"], ckpt.state[f"{prefix}.norm.weight"],
                                        ckpt.state[f"{prefix}.norm.bias"], eps=1e-5)
    folded = torch.nn.functional.conv1d(x, values[f"{prefix}.depthwise_conv.weight"].float(),
                                        values[f"{prefix}.depthwise_conv.bias"].float(), padding=7, groups=256)
    torch.testing.assert_close(folded, bn, atol=1e-4, rtol=1e-5)


def test_cmvn_comes_from_the_file_when_the_checkpoint_lacks_it(tmp_path, random_models):
    model_dir = copy_model(random_models["conformer"][0], tmp_path / "m")
    state = torch.load(os.path.join(model_dir, "final.pt"))
    mean = state.pop("encoder.global_cmvn.mean")
    state.pop("encoder.global_cmvn.istd")
    torch.save(state, os.path.join(model_dir, "final.pt"))
    ckpt = read_model_dir(model_dir)
    model = WeNetModel(ckpt.config, DataType.float32, 1000)
    values = map_checkpoint(ckpt.state, model, ckpt.cmvn)
    torch.testing.assert_close(values["encoder.global_cmvn.mean"].float(), mean)
    os.remove(os.path.join(model_dir, "global_cmvn"))
    with pytest.raises(ModelFileError, match="global_cmvn: CMVN stats named by train.yaml not found"):
        read_model_dir(model_dir)


def test_model_dir_files_are_checked(tmp_path, random_models):
    model_dir = copy_model(random_models["u2pp"][0], tmp_path / "m")
    with open(os.path.join(model_dir, "units.txt"), "a") as f:
        f.write("extra 4233\n")
    with pytest.raises(ModelFileError, match="4234 symbols, but train.yaml has output_dim 4233"):
        read_model_dir(model_dir)
    shutil.copyfile(os.path.join(random_models["u2pp"][0], "units.txt"), os.path.join(model_dir, "units.txt"))
    (tmp_path / "m" / "final.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="final.pt: cannot load checkpoint"):
        read_model_dir(model_dir, str(tmp_path / "m" / "final.pt"))
    os.remove(os.path.join(model_dir, "final.pt"))
    with pytest.raises(ModelFileError, match="no final.pt or avg_N.pt"):
        read_model_dir(model_dir)
