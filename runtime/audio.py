"""Audio loading: any format libsndfile reads (wav, flac, ogg, ...), down-mixed to mono, resampled to 16 kHz.

Many 16-bit mono PCM WAV files at the target rate, the common case, are read at once by native code (``PcmWavs``)
into one buffer, without the Python interpreter; the rest through libsndfile, one file at a time.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import NamedTuple

import numpy as np
import soundfile

from runtime.native import NativeBuildError, pointer, usable_cpus
from runtime.native import load as load_native

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


class PcmWavs(NamedTuple):
    """Where the samples of plain 16-bit mono PCM WAV files at one rate are (``pcm_wavs``): per file the byte
    offset of its data and its sample count, -1 for a file the native reader leaves to libsndfile."""

    paths: list[str]
    offsets: np.ndarray  # (n,) int64
    samples: np.ndarray  # (n,) int64

    def read(self, index: np.ndarray, out: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The samples of files ``index`` (handled ones) into int16 ``out`` at ``positions``, all at once on
        threads, the GIL released; per file whether it was read whole."""
        paths = _c_paths([self.paths[i] for i in index])
        ok = np.zeros(len(index), dtype=np.int32)
        offsets, counts = (np.ascontiguousarray(a[index]) for a in (self.offsets, self.samples))
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        _native_reader().wav_pcm16_read(paths, pointer(offsets), pointer(counts), pointer(positions), len(index),
                                        usable_cpus(), pointer(out), pointer(ok))
        return ok.astype(bool)


def pcm_wavs(paths: list[str], sample_rate: int = SAMPLE_RATE) -> PcmWavs | None:
    """The layouts of ``paths`` (headers only, on threads, the GIL released); None where the native reader cannot
    be built (no C++ compiler): then every file goes through libsndfile."""
    try:
        reader = _native_reader()
    except NativeBuildError:
        return None
    offsets, samples = np.zeros(len(paths), dtype=np.int64), np.zeros(len(paths), dtype=np.int64)
    reader.wav_pcm16_layout(_c_paths(paths), len(paths), sample_rate, usable_cpus(), pointer(offsets), pointer(samples))
    return PcmWavs(list(paths), offsets, samples)


def _c_paths(paths: list[str]):
    return (ctypes.c_char_p * len(paths))(*(p.encode() for p in paths))


@functools.cache
def _native_reader() -> ctypes.CDLL:
    lib = load_native("wav_reader")
    lib.wav_pcm16_layout.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32,
                                     ctypes.c_void_p, ctypes.c_void_p]
    lib.wav_pcm16_read.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int32] + [ctypes.c_void_p] * 2
    lib.wav_pcm16_layout.restype = lib.wav_pcm16_read.restype = None
    return lib
