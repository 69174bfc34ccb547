"""``WeNetEncoding``: padded fbank batches through the encoder network (encoder output + each frame's top CTC
log-probs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.frontend import Features
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

    def encode(self, feats: Features | list[torch.Tensor]) -> EncoderOutput:
        """``feats``: a padded batch, or (T_i, 80) fp32 fbank per utterance (padded here with zeros like WeNet), on any
        device."""
        if not isinstance(feats, Features):
            feats = Features.of(feats)
        lengths = torch.tensor(feats.lengths, dtype=torch.int32)
        out = self.session.run({"speech": feats.padded.to(self.engine.device), "speech_lengths": lengths})
        return EncoderOutput(out["encoder_out"], out["encoder_out_lens"], out["ctc_top_log_probs"],
                             out["ctc_top_labels"])
