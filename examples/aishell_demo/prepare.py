"""Data for the demo model: the real aishell sample split by utterance, plus Mandarin synthesized by espeak-ng.

    python examples/aishell_demo/prepare.py --shared ../shared/data --out .data/demo [--synthetic 1700] \
        [--corpus UD_Chinese-GSDSimp/zh_gsdsimp-ud-dev.conllu UD_Chinese-GSDSimp/zh_gsdsimp-ud-test.conllu]

- real speech: ``aishell_sample`` (2 speakers), split per speaker into train / dev / test by utterance; test is never
  trained on. Transcripts keep CJK characters and upper-cased Latin letters (brackets and punctuation dropped).
- synthetic speech: espeak-ng's ``cmn-latn-pinyin`` voice reads tone-numbered pinyin (pypinyin) of, in this order of
  preference, (a) clauses of freely licensed text corpora (``--corpus``: CoNLL-U treebanks such as Universal
  Dependencies' UD_Chinese-GSDSimp, CC BY-SA 4.0, or plain text), (b) the train transcripts and (c) sentences drawn
  from jieba's word list (MIT), with random voice variants, speeds and pitches.
Audio is written as 16 kHz Ogg Vorbis (the real train/dev part too) so the training set travels to a GPU machine
in under 60 MB (the shipped model's: 27 MB real, 30 MB synthetic); Kaldi-style ``wav.scp``/``text`` lists go to
``OUT/{train,dev,test}``.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import soundfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from runtime.audio import load_audio  # noqa: E402

VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m5", "+f1", "+f2", "+f3", "+f4", "+klatt", "+whisper"]
# Vorbis levels: real speech nearly transparent (fbank mean |diff| ~0.15), synthetic speech smaller.
REAL_COMPRESSION, SYNTHETIC_COMPRESSION = 0.2, 0.9
LABEL_CHARS = re.compile(r"[\u4e00-\u9fffA-Z]")


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


def corpus_clauses(paths: Sequence[str], min_chars: int = 6, max_chars: int = 25) -> list[str]:
    """Distinct clauses of ``min_chars``-``max_chars`` CJK characters, each with a reading, from text corpora.

    A CoNLL-U file contributes its ``# text =`` lines, any other file its lines. Sentences are cut at punctuation;
    a clause holding digits or Latin letters is dropped, as espeak-ng would read those in another language."""
    clauses: dict[str, None] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            conllu = path.endswith(".conllu")
            for line in f:
                if conllu and not line.startswith("# text = "):
                    continue
                for clause in re.split(r"[^\u4e00-\u9fff0-9A-Za-z]+", line.removeprefix("# text = ")):
                    if re.fullmatch(rf"[\u4e00-\u9fff]{{{min_chars},{max_chars}}}", clause) and all(
                            re.fullmatch(r"[a-z]+[1-5]", s) for s in to_pinyin(clause).split()):
                        clauses[clause] = None
    return list(clauses)


def to_pinyin(text: str) -> str:
    from pypinyin import Style, lazy_pinyin

    return " ".join(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True))


def synthesize(text: str, rng: random.Random) -> np.ndarray:
    """16 kHz mono float samples of ``text`` read by a random espeak-ng voice variant, speed and pitch."""
    voice = "cmn-latn-pinyin" + rng.choice(VARIANTS)
    args = ["espeak-ng", "-v", voice, "-s", str(rng.randint(120, 200)), "-p", str(rng.randint(25, 80)),
            "-g", str(rng.randint(0, 4)), "--stdout", to_pinyin(text)]
    wav = subprocess.run(args, capture_output=True, check=True).stdout
    data, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    from scipy.signal import resample_poly

    data = resample_poly(data, 160, rate // 100).astype(np.float32) if rate != 16000 else data
    voiced = np.flatnonzero(np.abs(data) > 0.01)
    # espeak-ng ends with ~0.35 s of digital silence: keep 0.15 s of it (8 % fewer bytes to carry)
    return data[:voiced[-1] + 2400] if voiced.size else data


def write_list(folder: str, items: list[tuple[str, str, str]]) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "wav.scp"), "w", encoding="utf-8") as f:
        f.writelines(f"{k} {w}\n" for k, w, _ in items)
    with open(os.path.join(folder, "text"), "w", encoding="utf-8") as f:
        f.writelines(f"{k} {t}\n" for k, _, t in items)


def prepare(shared: str, out: str, synthetic: int, seed: int = 0, max_real: int | None = None,
            corpus: Sequence[str] = ()) -> dict[str, int]:
    """``synthetic`` utterances read from ``corpus`` clauses, then train transcripts, then jieba sentences;
    ``max_real`` keeps only that many real train/dev utterances (for quick tests)."""
    rng = random.Random(seed)
    parts = split_sample(shared)
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
    clauses = corpus_clauses(corpus)
    rng.shuffle(clauses)
    texts = clauses + [t for _, _, t in parts["train"] if not re.search("[A-Z]", t)]
    texts = texts + jieba_sentences(max(0, synthetic - len(texts)), rng)
    for i, text in enumerate(texts[:synthetic]):
        key = f"SYN{i:06d}"
        name = f"audio/{key}.ogg"
        soundfile.write(os.path.join(out, name), synthesize(text, rng), 16000, format="OGG", subtype="VORBIS",
                        compression_level=SYNTHETIC_COMPRESSION)
        packed["train"].append((key, name, text))
    write_list(os.path.join(out, "train"), packed["train"])
    write_list(os.path.join(out, "dev"), packed["dev"])
    write_list(os.path.join(out, "test"), parts["test"])  # absolute paths into the shared sample: never packed
    return {part: len(items) for part, items in {**packed, "test": parts["test"]}.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
    p.add_argument("--out", default=".data/demo")
    p.add_argument("--synthetic", type=int, default=1700)
    p.add_argument("--corpus", nargs="*", default=[], help="text corpora (CoNLL-U or one sentence a line)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(prepare(args.shared, args.out, args.synthetic, args.seed, corpus=args.corpus))


if __name__ == "__main__":
    main()
