"""A typed WeNet config read from ``train.yaml`` of every era (2021 to HEAD)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import yaml


class ConfigError(ValueError):
    """train.yaml asks for something this implementation does not do (or is malformed)."""


# encoder_conf/decoder_conf keys that only matter for training.
_TRAINING_ONLY = {"dropout_rate", "positional_dropout_rate", "attention_dropout_rate",
                  "self_attention_dropout_rate", "src_attention_dropout_rate", "use_dynamic_chunk",
                  "use_dynamic_left_chunk", "static_chunk_size", "gradient_checkpointing", "use_sdpa"}


@dataclass
class EncoderConfig:
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    input_layer: str = "conv2d"
    pos_enc_layer_type: str = "rel_pos"
    selfattention_layer_type: str = "rel_selfattn"
    normalize_before: bool = True
    macaron_style: bool = True
    activation_type: str = "swish"
    use_cnn_module: bool = True
    cnn_module_kernel: int = 15
    causal: bool = False
    cnn_module_norm: str = "batch_norm"
    norm_eps: float = 1e-5
    conv_norm_eps: float = 1e-5
    final_norm: bool = True
    use_dynamic_chunk: bool = False  # recorded: the model can stream (full-context decoding here)


@dataclass
class DecoderConfig:
    kind: str = "bitransformer"  # "transformer" or "bitransformer"
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    r_num_blocks: int = 0
    normalize_before: bool = True
    activation_type: str = "relu"
    norm_eps: float = 1e-5


@dataclass
class ModelConfig:
    input_dim: int
    vocab_size: int
    encoder: EncoderConfig
    decoder: DecoderConfig
    sos: int
    eos: int
    blank_id: int = 0
    ctc_weight: float = 0.3
    reverse_weight: float = 0.0
    cmvn_file: str | None = None
    is_json_cmvn: bool = True
    num_mel_bins: int = 80
    frame_length: int = 25
    frame_shift: int = 10
    sample_rate: int = 16000
    vocab_file: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return self.encoder.output_size

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> ModelConfig:
        data = dict(data)
        data["encoder"] = EncoderConfig(**data["encoder"])
        data["decoder"] = DecoderConfig(**data["decoder"])
        return ModelConfig(**data)


def _build(cls, conf: dict, section: str, unsupported: dict):
    known = {f for f in cls.__dataclass_fields__}
    kwargs = {}
    for key, value in (conf or {}).items():
        if key in known:
            kwargs[key] = value
        elif key in unsupported:
            if value != unsupported[key]:
                raise ConfigError(f"{section}.{key}={value!r} is not supported (only {unsupported[key]!r})")
        elif key not in _TRAINING_ONLY:
            raise ConfigError(f"{section}.{key} is not understood by this implementation")
    return cls(**kwargs)


_ENCODER_UNSUPPORTED = {"query_bias": True, "key_bias": True, "value_bias": True, "conv_bias": True,
                        "conv_inner_factor": 2, "layer_norm_type": "layer_norm", "n_kv_head": None,
                        "head_dim": None, "mlp_type": "position_wise_feed_forward", "concat_after": False}
_DECODER_UNSUPPORTED = {"input_layer": "embed", "use_output_layer": True, "src_attention": True,
                        "tie_word_embedding": False, "query_bias": True, "key_bias": True, "value_bias": True,
                        "layer_norm_type": "layer_norm", "n_kv_head": None, "head_dim": None,
                        "mlp_type": "position_wise_feed_forward", "concat_after": False}


def load_config(yaml_path: str) -> ModelConfig:
    """Reads train.yaml: old (top-level cmvn_file, sos=eos=vocab-1) and new (cmvn_conf, special_tokens)."""
    try:
        with open(yaml_path, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{yaml_path}: cannot read train.yaml: {e}") from e
    if not isinstance(conf, dict):
        raise ConfigError(f"{yaml_path}: not a YAML mapping")
    try:
        vocab_size = int(conf["output_dim"])
        input_dim = int(conf["input_dim"])
    except KeyError as e:
        raise ConfigError(f"{yaml_path}: missing {e.args[0]!r}") from e

    encoder_type = conf.get("encoder", "conformer")
    if encoder_type != "conformer":
        raise ConfigError(f"{yaml_path}: encoder {encoder_type!r} is not supported (conformer only)")
    encoder = _build(EncoderConfig, conf.get("encoder_conf"), "encoder_conf", _ENCODER_UNSUPPORTED)
    if encoder.selfattention_layer_type not in ("rel_selfattn", "selfattn") or \
            encoder.pos_enc_layer_type not in ("rel_pos", "abs_pos"):
        raise ConfigError(f"{yaml_path}: attention {encoder.selfattention_layer_type}/{encoder.pos_enc_layer_type} "
                          "is not supported")
    if (encoder.selfattention_layer_type == "rel_selfattn") != (encoder.pos_enc_layer_type == "rel_pos"):
        raise ConfigError(f"{yaml_path}: rel_selfattn needs rel_pos (and selfattn abs_pos)")
    if not encoder.normalize_before:
        raise ConfigError(f"{yaml_path}: normalize_before=false is not supported")

    decoder_kind = conf.get("decoder", "bitransformer")
    if decoder_kind not in ("transformer", "bitransformer"):
        raise ConfigError(f"{yaml_path}: decoder {decoder_kind!r} is not supported")
    decoder = _build(DecoderConfig, conf.get("decoder_conf"), "decoder_conf", _DECODER_UNSUPPORTED)
    decoder.kind = decoder_kind
    if not decoder.normalize_before:
        raise ConfigError(f"{yaml_path}: decoder normalize_before=false is not supported")

    special = (conf.get("tokenizer_conf") or {}).get("special_tokens") or {}
    sos = int(special.get("<sos>", vocab_size - 1))
    eos = int(special.get("<eos>", vocab_size - 1))
    blank = int((conf.get("ctc_conf") or {}).get("ctc_blank_id", special.get("<blank>", 0)))

    if "cmvn_conf" in conf or "cmvn" in conf:  # 2023-12 onwards
        cmvn_conf = conf.get("cmvn_conf") or {}
        cmvn_file = cmvn_conf.get("cmvn_file") if conf.get("cmvn") == "global_cmvn" else None
        is_json = bool(cmvn_conf.get("is_json_cmvn", True))
    else:
        cmvn_file = conf.get("cmvn_file")
        is_json = bool(conf.get("is_json_cmvn", True))

    model_conf = conf.get("model_conf") or {}
    fbank = (conf.get("dataset_conf") or {}).get("fbank_conf") or {}
    resample = (conf.get("dataset_conf") or {}).get("resample_conf") or {}
    tokenizer_conf = conf.get("tokenizer_conf") or {}
    return ModelConfig(
        input_dim=input_dim, vocab_size=vocab_size, encoder=encoder, decoder=decoder, sos=sos, eos=eos,
        blank_id=blank, ctc_weight=float(model_conf.get("ctc_weight", 0.3)),
        reverse_weight=float(model_conf.get("reverse_weight", 0.0)),
        cmvn_file=cmvn_file, is_json_cmvn=is_json,
        num_mel_bins=int(fbank.get("num_mel_bins", input_dim)), frame_length=int(fbank.get("frame_length", 25)),
        frame_shift=int(fbank.get("frame_shift", 10)), sample_rate=int(resample.get("resample_rate", 16000)),
        vocab_file=tokenizer_conf.get("symbol_table_path") or conf.get("dict"),
    )


def resolve(model_dir: str, path: str | None, default: str) -> str:
    """A file named in train.yaml, looked up in the model dir first (recipes store relative paths)."""
    candidates = [os.path.join(model_dir, default)]
    if path:
        candidates = [os.path.join(model_dir, os.path.basename(path)), path, *candidates]
    for c in candidates:
        if os.path.exists(c):
            return c
    return candidates[0]
