"""Audio loading and Kaldi fbank against kaldi-native-fbank (an independent C++ Kaldi implementation)."""

import numpy as np
import pytest
import soundfile
import torch

from runtime.audio import AudioError, load_audio, pcm_wavs, read_audio
from runtime.frontend import fbank
from tests.conftest import WAVS, compiled_variants, sample_flacs, under_triton_interpreter


def kaldi_fbank(samples: np.ndarray) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80
    opts.energy_floor = 0.0
    f = knf.OnlineFbank(opts)
    f.accept_waveform(16000, samples.tolist())
    f.input_finished()
    return np.stack([f.get_frame(i) for i in range(f.num_frames_ready)])


@pytest.mark.parametrize("path", WAVS + sample_flacs(2))
def test_fbank_matches_kaldi(path):
    samples = load_audio(path)
    ours = fbank(samples).numpy()
    ref = kaldi_fbank(samples)
    assert ours.shape == ref.shape == (1 + (len(samples) - 400) // 160, 80)
    assert np.abs(ours - ref).max() < 2e-3
    assert np.median(np.abs(ours - ref)) < 1e-5


def test_audio_is_int16_scale_mono_16k(tmp_path):
    samples = load_audio(WAVS[0])
    assert samples.dtype == np.float32 and np.abs(samples).max() > 1000  # int16 scale, as Kaldi expects
    assert np.allclose(samples, np.round(samples))  # 16-bit PCM comes back exactly
    stereo = np.stack([samples, samples * 0.5], 1) / 32768
    soundfile.write(tmp_path / "stereo8k.flac", stereo[::2], 8000)
    down = load_audio(str(tmp_path / "stereo8k.flac"))
    assert abs(len(down) - len(samples)) <= 2  # resampled back to 16 kHz
    np.testing.assert_allclose(down[1000:1100] / (0.75 * samples[1000:1100] + 1e-9), 1.0, atol=0.6)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_audio_is_the_float_read_times_2_15(tmp_path, subtype):
    """16-bit PCM is read as integers (faster); every subtype gives WeNet's float read x 2^15, bit for bit."""
    samples = soundfile.read(WAVS[0], dtype="float32")[0]
    soundfile.write(tmp_path / "a.wav", samples, 16000, subtype=subtype)
    want = soundfile.read(tmp_path / "a.wav", dtype="float32")[0] * np.float32(1 << 15)
    assert np.array_equal(load_audio(str(tmp_path / "a.wav")), want)


@pytest.mark.parametrize("content, message", [
    (b"", "cannot decode|cannot read"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 3, "cannot decode|cannot read"),
    (b"this is text, not audio", "cannot decode|cannot read"),
])
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as e:
        load_audio(str(path))
    assert str(path) in str(e.value)


def test_nan_and_empty_audio_are_rejected(tmp_path):
    soundfile.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2] * 1000, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(str(tmp_path / "nan.wav"))
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(str(tmp_path / "empty.wav"))
    assert fbank(torch.zeros(399)).shape == (0, 80)


def write_with_chunk_before_data(path, samples: np.ndarray) -> None:
    """A 16-bit mono WAV with a LIST chunk of odd size (padded to even) between fmt and data."""
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little") + \
        (32000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    data = samples.astype("<i2").tobytes()
    chunks = b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"LIST" + (3).to_bytes(4, "little") + b"abc\x00" + \
        b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + (4 + len(chunks)).to_bytes(4, "little") + b"WAVE" + chunks)


def test_native_wav_reader_reads_what_libsndfile_reads_and_leaves_it_the_rest(tmp_path):
    """Plain 16-bit mono PCM WAVs at 16 kHz (also WAVE_FORMAT_EXTENSIBLE, chunks before the data) are read natively,
    sample for sample as libsndfile reads them; every other file is left to libsndfile (-1)."""
    samples = soundfile.read(WAVS[0], dtype="int16")[0]
    handled = {"plain.wav": {}, "extensible.wav": {"format": "WAVEX"}}
    others = {"pcm24.wav": {"subtype": "PCM_24"}, "float.wav": {"subtype": "FLOAT"}, "a.flac": {},
              "stereo.wav": {}, "8k.wav": {}}
    for name, kwargs in {**handled, **others}.items():
        data = np.stack([samples, samples], 1) if name == "stereo.wav" else samples
        soundfile.write(tmp_path / name, data, 8000 if name == "8k.wav" else 16000, **kwargs)
    write_with_chunk_before_data(tmp_path / "list_chunk.wav", samples[:777])
    (tmp_path / "cut.wav").write_bytes((tmp_path / "plain.wav").read_bytes()[:-100])  # header claims more
    names = [*handled, "list_chunk.wav", *others, "cut.wav", "missing.wav"]
    layout = pcm_wavs([str(tmp_path / n) for n in names])  # built here: the test environment has a C++ compiler
    native = len(handled) + 1
    assert (layout.samples[native:] == -1).all() and (layout.samples[:native] > 0).all()
    index = np.arange(native)
    positions = np.concatenate([[0], np.cumsum(layout.samples[:native])[:-1]])
    out = np.full(int(layout.samples[:native].sum()), 7, dtype=np.int16)
    assert layout.read(index, out, positions).all()
    for i, at in zip(index, positions):
        want = read_audio(str(tmp_path / names[i]))
        assert want.dtype == np.int16 and np.array_equal(out[at:at + len(want)], want), names[i]
    (tmp_path / "plain.wav").write_bytes((tmp_path / "plain.wav").read_bytes()[:-100])  # cut after its header read
    assert not layout.read(index[:1], out, positions[:1]).any()


def test_batched_fbank_equals_one_by_one():
    from runtime.frontend import fbank_batch

    waves = [load_audio(p) for p in WAVS + sample_flacs(2)] + [np.zeros(100, dtype=np.float32)]
    batched = fbank_batch(waves)
    assert [b.shape[0] for b in batched] == [fbank(w).shape[0] for w in waves]
    assert batched[-1].shape == (0, 80)
    for b, w in zip(batched, waves):
        torch.testing.assert_close(b, fbank(w), atol=1e-4, rtol=1e-5)
    # the pipeline's int16 samples (16-bit PCM files), alone and mixed with float ones: the same features
    ints = [read_audio(p) for p in WAVS + sample_flacs(2)]
    assert {w.dtype for w in ints} == {np.dtype(np.int16)}
    for got in (fbank_batch(ints), fbank_batch(ints[:1] + waves[1:])):
        assert all(torch.equal(g, b) for g, b in zip(got, batched))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fbank_on_the_gpu_matches_the_cpu_fbank():
    """The pipeline's batched GPU fbank against the CPU fbank (itself held to kaldi-native-fbank above)."""
    from runtime.frontend import fbank_batch

    waves = [load_audio(p) for p in WAVS + sample_flacs(8)]
    for gpu, w in zip(fbank_batch(waves, device="cuda"), waves):
        assert (gpu.cpu() - fbank(w)).abs().max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fbank_kernels_compile_once_per_sample_type():
    """Waves that start anywhere in an upload and have any frame count must not compile new kernel variants (~1 s
    each) in the middle of a run."""
    from plugins.fbank import _log_mel_kernel, _window_kernel
    from runtime.frontend import fbank_batch

    samples = torch.from_numpy(read_audio(WAVS[0])).cuda()
    counts = []
    for start, size in ((0, 16000), (1, 400), (7, 16 * 160 + 240), (3, 17 * 160 + 240)):
        for waves in ([samples[start:start + size]], [samples[start:start + size], samples[:size].float()]):
            fbank_batch(waves, device="cuda")
        counts.append((compiled_variants(_window_kernel), compiled_variants(_log_mel_kernel)))
    assert counts[1:] == counts[:1] * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fbank_graphs_equal_the_kernels_launched_one_by_one():
    """A lone file's graphed fbank (``FbankGraphs``) is the batched path's, for int16 and float waves of several
    buckets, also after a longer wave left its samples in the buffer beyond a shorter one's."""
    from runtime.frontend import FbankGraphs, fbank_batch

    graphs = FbankGraphs([128, 512, 1024], torch.device("cuda"))
    waves = [torch.from_numpy(read_audio(w)).cuda() for w in WAVS]  # 4.2 to 8.7 s, int16
    waves += [waves[-1][:16000].float(), waves[0][:1000]]  # float, and 4 frames into the smallest bucket
    for wave in waves + waves[::-1]:
        got = graphs(wave).clone()
        assert torch.equal(got, fbank_batch([wave], device="cuda")[0])
    assert set(graphs.graphs) == {(512, torch.int16), (1024, torch.int16), (128, torch.float32), (128, torch.int16)}


def kernel_errors() -> list[float]:
    """Max |GPU kernels' padded fbank - torch path's| (``plugins.fbank.log_mel``, run on CPU tensors) for one int16
    wave and for an int16 and a float wave in one buffer (promoted), as ``fbank_padded`` calls it."""
    from plugins.fbank import log_mel
    from runtime.frontend import Features, mel_banks, num_frames, one_buffer, povey_window, wave_table

    waves = [read_audio(WAVS[0]), load_audio(WAVS[1])[:16000]]
    window, banks = povey_window(400), mel_banks(80, 512, 16000)
    errors = []
    for group in (waves[:1], waves):
        samples, starts = one_buffer([torch.from_numpy(w) for w in group])
        counts = [num_frames(len(w)) for w in group]
        table = torch.from_numpy(wave_table(starts, counts))
        got = log_mel(samples, table, sum(counts), max(counts), window, banks, 512, 160)
        errors.append(float((got - Features.of([fbank(w) for w in group]).padded).abs().max()))  # padding: zeros
    return errors


def test_waves_of_one_upload_are_read_in_place():
    """A native read's files are views of one upload: the kernels read them there, with no copy; waves apart are
    concatenated."""
    from runtime.frontend import one_buffer

    upload = torch.arange(1000, dtype=torch.int16)
    whole, starts = one_buffer([upload[10:300], upload[500:900]])
    assert whole.data_ptr() == upload.data_ptr() and whole.numel() == 1000 and starts == [10, 500]
    whole, starts = one_buffer([upload[10:300], torch.ones(5, dtype=torch.int16)])
    assert whole.numel() == 295 and starts == [0, 290] and torch.equal(whole[:290], upload[10:300])


def test_fbank_kernels_match_the_torch_path_under_the_interpreter():
    errors = under_triton_interpreter("t.kernel_errors()", "tests.test_frontend")
    assert len(errors) == 2 and max(errors) < 1e-3, errors
