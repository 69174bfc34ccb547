"""``WeNetEncoding``: padded fbank batches through the encoder network (encoder output + each frame's top CTC
log-probs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.session import EngineDir


@dataclass
class EncoderOutput:
    encoder_out: torch.Tensor  # (B, T', D), engine dtype
    encoder_lens: torch.Tensor  # (B,) int32
    ctc_top_log_probs: torch.Tensor  # (B, T', k) fp32, each frame's best first
    ctc_top_labels: torch.Tensor  # (B, T', k) int32


class WeNetEncoding:
    def __init__(self, engine: EngineDir):
        self.engine = engine
        self.session = engine.sessions["encoder"]
        self.frames = self.session.profile("frames")
        self.max_batch_size = self.session.profile("batch").max

    def encode(self, feats: list[torch.Tensor]) -> EncoderOutput:
        """``feats``: (T_i, 80) fp32 fbank per utterance, on any device; padded with zeros like WeNet."""
        device = self.engine.device
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.int32)
        feats = [f.to(device) for f in feats]
        # one utterance needs no padding here: the session pads to its bucket anyway (a copy saved at batch 1)
        speech = feats[0][None] if len(feats) == 1 else torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        out = self.session.run({"speech": speech, "speech_lengths": lengths})
        return EncoderOutput(out["encoder_out"], out["encoder_out_lens"], out["ctc_top_log_probs"],
                             out["ctc_top_labels"])
