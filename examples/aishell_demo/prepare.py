"""Data for the demo model: the real aishell sample split by utterance, plus Mandarin synthesized by espeak-ng.

    python examples/aishell_demo/prepare.py --shared ../shared/data --out .data/demo [--synthetic 11000] \
        [--corpus UD/zh_gsdsimp-ud-dev.conllu ...] [--traditional_corpus UD/zh-ud-train.conllu ...] \
        [--defer_synthesis]
    python examples/aishell_demo/prepare.py --out .data/demo --synthesize_only [--espeak PATH]   # e.g. on the GPU

- real speech: ``aishell_sample`` (2 speakers), split per speaker into train / dev / test by utterance; test is never
  trained on. Transcripts keep CJK characters and upper-cased Latin letters (brackets and punctuation dropped).
- synthetic speech: espeak-ng's ``cmn-latn-pinyin`` voice reads tone-numbered pinyin (pypinyin) of, in this order of
  preference, (a) clauses of freely licensed text corpora (CoNLL-U treebanks such as Universal Dependencies'
  UD_Chinese-GSDSimp, CC BY-SA 4.0, or plain text; traditional-script corpora are converted by OpenCC), (b) the train
  transcripts and (c) sentences drawn from jieba's word list (MIT), with random voice variants, speeds and pitches.
  Clauses that overlap a dev or test transcript (one inside the other) are left out.

The readings are planned first (``OUT/synthetic.tsv``: text, pinyin and espeak-ng's voice settings, seeded) and then
synthesized; ``--defer_synthesis`` stops after the plan, so that the synthesis can run on the GPU machine (with
``espeak_bundle.sh``'s copy of espeak-ng where none is installed) and only the real audio and the plan travel.
Audio is 16 kHz Ogg Vorbis for the real part (compact to carry) and Vorbis or FLAC (``--synthetic_format``) for the
synthetic part; Kaldi-style ``wav.scp``/``text`` lists go to ``OUT/{train,synthetic,dev,test}``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass

import numpy as np
import soundfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from runtime.audio import load_audio  # noqa: E402

VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m5", "+f1", "+f2", "+f3", "+f4", "+klatt", "+whisper"]
# Vorbis levels: real speech nearly transparent (fbank mean |diff| ~0.15), synthetic speech smaller.
REAL_COMPRESSION, SYNTHETIC_COMPRESSION = 0.2, 0.9
LABEL_CHARS = re.compile(r"[\u4e00-\u9fffA-Z]")
PLAN = "synthetic.tsv"


def clean_transcript(text: str) -> str:
    return "".join(LABEL_CHARS.findall(text.upper()))


def split_sample(shared: str, dev_every: int = 18, test_every: int = 9) -> dict[str, list[tuple[str, str, str]]]:
    """Per speaker, every ``test_every``-th utterance is test, every ``dev_every``-th of the rest dev."""
    folder = os.path.join(shared, "aishell_sample")
    with open(os.path.join(folder, "wav.scp"), encoding="utf-8") as f:
        wavs = dict(line.split(maxsplit=1) for line in f if line.strip())
    with open(os.path.join(folder, "text"), encoding="utf-8") as f:
        texts = {k: clean_transcript(t) for k, t in (line.split(maxsplit=1) for line in f if line.strip())}
    parts: dict[str, list] = {"train": [], "dev": [], "test": []}
    speakers: dict[str, list[str]] = {}
    for key in sorted(wavs):
        if texts.get(key):
            speakers.setdefault(key[6:11], []).append(key)  # BAC009S0150W0001 -> S0150
    for keys in speakers.values():
        for i, key in enumerate(keys):
            part = "test" if i % test_every == test_every - 1 else "dev" if i % dev_every == dev_every - 2 else "train"
            parts[part].append((key, os.path.join(folder, wavs[key].strip()), texts[key]))
    return parts


def jieba_sentences(n: int, rng: random.Random) -> list[str]:
    """``n`` sentences of 3-7 words drawn from jieba's dictionary, weighted by sqrt(frequency)."""
    import jieba

    words, weights = [], []
    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as f:
        for line in f:
            word, freq = line.split()[:2]
            if re.fullmatch(r"[\u4e00-\u9fff]{1,4}", word) and int(freq) >= 20:
                words.append(word)
                weights.append(int(freq) ** 0.5)
    return ["".join(rng.choices(words, weights, k=rng.randint(3, 7))) for _ in range(n)]


def corpus_sentences(path: str) -> Iterator[str]:
    """A CoNLL-U file's sentences (its ``# text =`` lines, or where it has none, as UD_Chinese-GSD's 2017 files, each
    sentence's word forms joined: Chinese puts no spaces between words); any other file's lines."""
    with open(path, encoding="utf-8") as f:
        if not path.endswith(".conllu"):
            yield from f
            return
        forms: list[str] = []
        has_text = False
        for line in f:
            if line.startswith("# text = "):
                has_text = True
                yield line.removeprefix("# text = ")
            elif not has_text and line[:1].isdigit() and "\t" in line:
                forms.append(line.split("\t")[1])
            elif not line.strip() and forms:
                yield "".join(forms)
                forms = []
        if forms:
            yield "".join(forms)


def corpus_clauses(paths: Sequence[str], traditional: Sequence[str] = (), exclude: Sequence[str] = (),
                   min_chars: int = 6, max_chars: int = 25) -> list[str]:
    """Distinct clauses of ``min_chars``-``max_chars`` CJK characters, each with a reading, from text corpora.

    Sentences are cut at punctuation; a clause holding digits or Latin letters is dropped, as espeak-ng would read
    those in another language. ``traditional`` files are converted to simplified script (OpenCC's t2s) first. A clause
    that occurs inside one of the ``exclude`` texts (the dev and test transcripts), or holds one, is dropped."""
    clauses: dict[str, None] = {}
    for path in [*paths, *traditional]:
        convert = _t2s() if path in traditional else str
        for sentence in corpus_sentences(path):
            for clause in re.split(r"[^\u4e00-\u9fff0-9A-Za-z]+", convert(sentence)):
                if re.fullmatch(rf"[\u4e00-\u9fff]{{{min_chars},{max_chars}}}", clause) and all(
                        re.fullmatch(r"[a-z]+[1-5]", s) for s in to_pinyin(clause).split()):
                    clauses[clause] = None
    return [c for c in clauses if not any(c in text or text in c for text in exclude)]


def _t2s():
    from opencc import OpenCC

    return OpenCC("t2s").convert


@functools.cache  # corpus_clauses reads each clause's pinyin to filter, plan_readings again to plan
def to_pinyin(text: str) -> str:
    from pypinyin import Style, lazy_pinyin

    return " ".join(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True))


@dataclass
class Reading:
    """One planned synthetic utterance: what espeak-ng reads and how."""

    key: str
    path: str  # relative to the data dir
    voice: str
    speed: int  # words per minute
    pitch: int
    gap: int  # pause between words, 10 ms units
    text: str
    pinyin: str


def plan_readings(texts: Sequence[str], rng: random.Random, audio_format: str = "ogg") -> list[Reading]:
    """A random espeak-ng voice variant, speed, pitch and word gap for each text."""
    return [Reading(f"SYN{i:06d}", f"audio/SYN{i:06d}.{audio_format}", "cmn-latn-pinyin" + rng.choice(VARIANTS),
                    rng.randint(120, 200), rng.randint(25, 80), rng.randint(0, 4), text, to_pinyin(text))
            for i, text in enumerate(texts)]


def synthesize(reading: Reading, espeak: str = "espeak-ng") -> np.ndarray:
    """16 kHz mono float samples of ``reading``."""
    args = [espeak, "-v", reading.voice, "-s", str(reading.speed), "-p", str(reading.pitch), "-g", str(reading.gap),
            "--stdout", reading.pinyin]
    run = subprocess.run(args, capture_output=True)
    if run.returncode or not run.stdout:
        raise RuntimeError(f"espeak-ng failed on {reading.key} ({reading.pinyin!r}): {run.stderr.decode(errors='replace')}")
    data, rate = soundfile.read(io.BytesIO(run.stdout), dtype="float32")
    from scipy.signal import resample_poly

    data = resample_poly(data, 160, rate // 100).astype(np.float32) if rate != 16000 else data
    voiced = np.flatnonzero(np.abs(data) > 0.01)
    # espeak-ng ends with ~0.35 s of digital silence: keep 0.15 s of it (8 % fewer bytes to carry)
    return data[:voiced[-1] + 2400] if voiced.size else data


def write_reading(out: str, reading: Reading, espeak: str = "espeak-ng") -> None:
    ogg = reading.path.endswith(".ogg")
    soundfile.write(os.path.join(out, reading.path), synthesize(reading, espeak), 16000, format="OGG" if ogg else "FLAC",
                    **({"subtype": "VORBIS", "compression_level": SYNTHETIC_COMPRESSION} if ogg else {}))


def write_plan(out: str, readings: Sequence[Reading]) -> None:
    with open(os.path.join(out, PLAN), "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(astuple(r) for r in readings)


def read_plan(out: str) -> list[Reading]:
    with open(os.path.join(out, PLAN), encoding="utf-8", newline="") as f:
        return [Reading(k, p, v, int(s), int(pi), int(g), t, py) for k, p, v, s, pi, g, t, py in
                csv.reader(f, delimiter="\t")]


def synthesize_plan(out: str, espeak: str = "espeak-ng", jobs: int | None = None) -> int:
    """Synthesize every reading of ``OUT/synthetic.tsv`` (a thread per job: the work is espeak-ng processes and
    libsndfile/scipy calls that release the GIL); returns how many."""
    if shutil.which(espeak) is None:
        raise FileNotFoundError(f"no espeak-ng program {espeak!r}: install espeak-ng, or pass --espeak with the copy "
                                "that examples/aishell_demo/espeak_bundle.sh makes")
    readings = read_plan(out)
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    with ThreadPoolExecutor(jobs or os.cpu_count()) as pool:
        list(pool.map(lambda r: write_reading(out, r, espeak), readings))
    return len(readings)


def write_list(folder: str, items: Sequence[tuple[str, str, str]]) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "wav.scp"), "w", encoding="utf-8") as f:
        f.writelines(f"{k} {w}\n" for k, w, _ in items)
    with open(os.path.join(folder, "text"), "w", encoding="utf-8") as f:
        f.writelines(f"{k} {t}\n" for k, _, t in items)


def prepare(shared: str, out: str, synthetic: int, seed: int = 0, max_real: int | None = None,
            corpus: Sequence[str] = (), traditional_corpus: Sequence[str] = (), synthetic_format: str = "ogg",
            defer_synthesis: bool = False, espeak: str = "espeak-ng") -> dict[str, int]:
    """``synthetic`` utterances read from corpus clauses, then train transcripts, then jieba sentences;
    ``max_real`` keeps only that many real train/dev utterances (for quick tests)."""
    rng = random.Random(seed)
    parts = split_sample(shared)
    held_out = [t for part in ("dev", "test") for _, _, t in parts[part]]
    if max_real is not None:
        parts = {k: v[:max_real] if k != "test" else v for k, v in parts.items()}
    audio = os.path.join(out, "audio")
    os.makedirs(audio, exist_ok=True)
    packed: dict[str, list] = {"train": [], "dev": []}
    for part in ("train", "dev"):  # the real part that trains, re-encoded compactly (relative paths)
        for key, path, text in parts[part]:
            name = f"audio/{key}.ogg"
            soundfile.write(os.path.join(out, name), load_audio(path) / 32768, 16000, format="OGG", subtype="VORBIS",
                            compression_level=REAL_COMPRESSION)
            packed[part].append((key, name, text))
    clauses = corpus_clauses(corpus, traditional_corpus, exclude=held_out)
    rng.shuffle(clauses)
    texts = clauses + [t for _, _, t in parts["train"] if not re.search("[A-Z]", t)]
    texts = texts + jieba_sentences(max(0, synthetic - len(texts)), rng)
    readings = plan_readings(texts[:synthetic], rng, synthetic_format)
    write_plan(out, readings)
    if not defer_synthesis:
        synthesize_plan(out, espeak)
    write_list(os.path.join(out, "train"), packed["train"])
    write_list(os.path.join(out, "synthetic"), [(r.key, r.path, r.text) for r in readings])
    write_list(os.path.join(out, "dev"), packed["dev"])
    write_list(os.path.join(out, "test"), parts["test"])  # absolute paths into the shared sample: never packed
    return {"train": len(packed["train"]), "synthetic": len(readings), "dev": len(packed["dev"]),
            "test": len(parts["test"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
    p.add_argument("--out", default=".data/demo")
    p.add_argument("--synthetic", type=int, default=11000)
    p.add_argument("--corpus", nargs="*", default=[], help="text corpora (CoNLL-U or one sentence a line)")
    p.add_argument("--traditional_corpus", nargs="*", default=[], help="corpora in traditional script")
    p.add_argument("--synthetic_format", choices=["ogg", "flac"], default="ogg")
    p.add_argument("--defer_synthesis", action="store_true", help="write the plan and the lists, not the audio")
    p.add_argument("--synthesize_only", action="store_true", help="synthesize OUT's plan (after --defer_synthesis)")
    p.add_argument("--espeak", default="espeak-ng", help="the espeak-ng program")
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.synthesize_only:
        print({"synthesized": synthesize_plan(args.out, args.espeak, args.jobs)})
        return
    print(prepare(args.shared, args.out, args.synthetic, args.seed, corpus=args.corpus,
                  traditional_corpus=args.traditional_corpus, synthetic_format=args.synthetic_format,
                  defer_synthesis=args.defer_synthesis, espeak=args.espeak))


if __name__ == "__main__":
    main()
