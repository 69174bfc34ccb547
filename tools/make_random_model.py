"""Write a WeNet model dir with random but non-trivial weights, for the AISHELL-1 recipes at real size.

    python tools/make_random_model.py --recipe u2pp --output_dir exp/random_u2pp

``conformer``: 2021-era experiment (old train.yaml with top-level cmvn_file, sos = eos = vocab-1,
legacy concat_linear keys, BatchNorm conv module, kernel 15, 6-block TransformerDecoder).
``u2pp``: HEAD-era experiment (cmvn_conf, special_tokens with sos = eos = 2, persistent position
tables, causal LayerNorm conv module, kernel 8, BiTransformerDecoder 3+3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.wenet.config import load_config  # noqa: E402
from models.wenet.reference import ReferenceModel  # noqa: E402
from weights.files import load_cmvn, load_vocab  # noqa: E402

SHARED = os.path.join(os.environ.get("WENET_TRT_SHARED_DATA") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"), "aishell1")

ENCODER = {"output_size": 256, "attention_heads": 4, "linear_units": 2048, "num_blocks": 12, "dropout_rate": 0.1,
           "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.0, "input_layer": "conv2d",
           "normalize_before": True, "use_cnn_module": True, "activation_type": "swish",
           "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn"}
FBANK = {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25, "dither": 0.1}

RECIPES = {
    "conformer": {
        "input_dim": 80, "output_dim": 4233, "cmvn_file": "global_cmvn", "is_json_cmvn": True,
        "encoder": "conformer", "encoder_conf": {**ENCODER, "cnn_module_kernel": 15},
        "decoder": "transformer",
        "decoder_conf": {"attention_heads": 4, "linear_units": 2048, "num_blocks": 6, "dropout_rate": 0.1,
                         "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.0,
                         "src_attention_dropout_rate": 0.0},
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False},
        "dataset_conf": {"fbank_conf": FBANK, "batch_conf": {"batch_size": 16}},
    },
    "u2pp": {
        "input_dim": 80, "output_dim": 4233,
        "encoder": "conformer",
        "encoder_conf": {**ENCODER, "cnn_module_kernel": 8, "causal": True, "use_dynamic_chunk": True,
                         "use_dynamic_left_chunk": False, "cnn_module_norm": "layer_norm",
                         "attention_dropout_rate": 0.1},
        "decoder": "bitransformer",
        "decoder_conf": {"attention_heads": 4, "linear_units": 2048, "num_blocks": 3, "r_num_blocks": 3,
                         "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1,
                         "src_attention_dropout_rate": 0.1},
        "tokenizer": "char",
        "tokenizer_conf": {"symbol_table_path": "data/dict/lang_char.txt", "split_with_space": False,
                           "special_tokens": {"<blank>": 0, "<unk>": 1, "<sos>": 2, "<eos>": 2}},
        "ctc": "ctc", "ctc_conf": {"ctc_blank_id": 0},
        "cmvn": "global_cmvn", "cmvn_conf": {"cmvn_file": "data/train/global_cmvn", "is_json_cmvn": True},
        "model": "asr_model",
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False, "reverse_weight": 0.3},
        "dataset_conf": {"fbank_conf": {**FBANK, "dither": 1.0}, "batch_conf": {"batch_size": 16}},
    },
}


def _randomize(model: ReferenceModel, seed: int) -> None:
    """Default init, plus random norms, biases and BN statistics, and peaky output layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias") or "pos_bias" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                bound = (3.0 / p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
        model.ctc.ctc_lo.weight.mul_(3.0)
        model.ctc.ctc_lo.bias[model.blank_id] += 4.0
        for name, module in model.named_modules():  # confident decoders, as trained ones are
            if name.endswith("output_layer"):
                module.weight.mul_(3.0)


def write_random_model(output_dir: str, conf: dict, vocab: list[str], cmvn_path: str, seed: int = 0,
                       legacy_keys: bool = False, position_tables: bool = False) -> str:
    """A model dir for ``conf`` (a train.yaml dict) with random weights; ``legacy_keys`` adds the unused
    pre-2022-05 concat_linear keys, ``position_tables`` the pe buffers of checkpoints saved since 2024-03."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "units.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{s} {i}\n" for i, s in enumerate(vocab))
    shutil.copyfile(cmvn_path, os.path.join(output_dir, "global_cmvn"))
    with open(os.path.join(output_dir, "train.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, allow_unicode=True, sort_keys=False)

    config = load_config(os.path.join(output_dir, "train.yaml"))
    model = ReferenceModel(config)
    _randomize(model, seed)
    mean, istd = load_cmvn(os.path.join(output_dir, "global_cmvn"))
    model.encoder.global_cmvn.mean.copy_(torch.from_numpy(mean).float())
    model.encoder.global_cmvn.istd.copy_(torch.from_numpy(istd).float())
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    d = config.d_model
    if legacy_keys:
        for i in range(config.encoder.num_blocks):
            state[f"encoder.encoders.{i}.concat_linear.weight"] = torch.randn(d, 2 * d, generator=g)
            state[f"encoder.encoders.{i}.concat_linear.bias"] = torch.randn(d, generator=g)
        for prefix, decoder in (("decoder.", model.decoder),) if config.decoder.kind == "transformer" else \
                (("decoder.left_decoder.", model.decoder.left_decoder), ("decoder.right_decoder.", model.decoder.right_decoder)):
            for j in range(len(decoder.decoders)):
                for k in (1, 2):
                    state[f"{prefix}decoders.{j}.concat_linear{k}.weight"] = torch.randn(d, 2 * d, generator=g)
                    state[f"{prefix}decoders.{j}.concat_linear{k}.bias"] = torch.randn(d, generator=g)
    if position_tables:
        pe = model.encoder.embed.pos_enc.pe.clone()
        state["encoder.embed.pos_enc.pe"] = pe
        sides = ["decoder.embed.1.pe"] if config.decoder.kind == "transformer" else \
            ["decoder.left_decoder.embed.1.pe", "decoder.right_decoder.embed.1.pe"]
        for key in sides:
            state[key] = pe
    torch.save(state, os.path.join(output_dir, "final.pt"))
    return output_dir


def make_random_model(recipe: str, output_dir: str, seed: int = 0, shared: str = SHARED) -> str:
    vocab = load_vocab(os.path.join(shared, "lang_char.txt"))  # <blank> <unk> chars... <sos/eos>
    if recipe == "u2pp":  # HEAD recipe dict: <sos/eos> is id 2
        vocab = vocab[:2] + [vocab[-1]] + vocab[2:-1]
    return write_random_model(output_dir, RECIPES[recipe], vocab, os.path.join(shared, "global_cmvn"), seed,
                              legacy_keys=recipe == "conformer", position_tables=recipe == "u2pp")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="u2pp")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(make_random_model(args.recipe, args.output_dir, args.seed))


if __name__ == "__main__":
    main()
