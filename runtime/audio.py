"""Audio loading: any format libsndfile reads (wav, flac, ogg, ...), down-mixed to mono, resampled to 16 kHz."""

from __future__ import annotations

import math

import numpy as np
import soundfile

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file that cannot be transcribed; the message names the file and the problem."""


def duration(path: str) -> float:
    """Seconds of audio from the file's header, without decoding it (an open file's frame count: ``soundfile.info``
    also reads the header's log text, which made it ~5x slower)."""
    try:
        with soundfile.SoundFile(path) as f:
            return f.frames / f.samplerate
    except (soundfile.LibsndfileError, OSError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from e


def load_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples on the int16 scale (what Kaldi fbank expects), at ``sample_rate``."""
    return read_audio(path, sample_rate).astype(np.float32, copy=False)


def read_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``load_audio``'s samples, left as int16 where the file is 16-bit mono PCM at ``sample_rate`` (the values are
    the same; half the bytes to move to a GPU, which converts them there)."""
    try:
        with soundfile.SoundFile(path) as f:
            # 16-bit PCM read as integers is the float read times 2^15 exactly, and ~5x faster to decode
            pcm16 = f.subtype == "PCM_16"
            data, rate = f.read(dtype="int16" if pcm16 else "float32", always_2d=True), f.samplerate
    except soundfile.LibsndfileError as e:
        raise AudioError(f"{path}: cannot decode audio ({e.error_string if hasattr(e, 'error_string') else e})") from e
    except (OSError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    if data.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if pcm16:
        if data.shape[1] == 1 and rate == sample_rate:
            return data[:, 0]
        data = data.astype(np.float32)
    elif np.isfinite(data).all():
        data *= np.float32(1 << 15)
    else:
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    samples = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(rate, sample_rate)
        samples = resample_poly(samples, sample_rate // g, rate // g).astype(np.float32)
    return samples
