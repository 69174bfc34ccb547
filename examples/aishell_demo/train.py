"""Train the demo u2++ conformer the WeNet way and write a standard WeNet model dir.

    python examples/aishell_demo/train.py --data .data/demo --out exp/demo --minutes 8.3 [--device cuda]

CTC + attention loss (label smoothing 0.1, ctc_weight 0.3, reverse_weight 0.3, BiTransformerDecoder), dynamic-chunk
training (half the batches full context, the others a random chunk of 1-25 frames), SpecAugment (2 frequency masks
of up to 10 bins, 2 time masks of up to 50 frames), speed perturbation 0.9/1.0/1.1 of the real speech (the synthetic
speech already varies espeak-ng's rate and pitch), the real speech ``--real_repeat`` times an epoch (once for the shipped
model: twice gave a higher dev CER), Adam with warm-up and inverse square-root decay, bf16 autocast on GPUs, and the
average of the last checkpoints as ``final.pt`` (as WeNet's average_model). The model is ``reference.py`` itself, so
the checkpoint has WeNet's key names.
"""

from __future__ import annotations

import argparse
import collections
import copy
import itertools
import json
import math
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from models.wenet.config import load_config  # noqa: E402
from models.wenet.reference import IGNORE_ID, ReferenceModel  # noqa: E402
from runtime.audio import load_audio  # noqa: E402
from runtime.frontend import fbank  # noqa: E402
from tools.make_random_model import RECIPES  # noqa: E402

SPEEDS = (0.9, 1.0, 1.1)
SPECIALS = ["<blank>", "<unk>", "<sos/eos>"]


def model_yaml(vocab_size: int, tiny: bool = False, dropout: float = 0.1) -> dict:
    """train.yaml of the demo model: WeNet's AISHELL-1 u2++ recipe (HEAD-era keys, sos = eos = 2), made smaller."""
    conf = copy.deepcopy(RECIPES["u2pp"])
    size = {"output_size": 64, "attention_heads": 2, "linear_units": 128, "num_blocks": 2} if tiny else \
        {"output_size": 256, "attention_heads": 4, "linear_units": 1024, "num_blocks": 6}
    conf["output_dim"] = vocab_size
    conf["encoder_conf"].update(size, dropout_rate=dropout)
    conf["decoder_conf"].update(attention_heads=size["attention_heads"], linear_units=size["linear_units"],
                                num_blocks=1 if tiny else 3, r_num_blocks=1, dropout_rate=dropout)
    conf["tokenizer_conf"]["symbol_table_path"] = "units.txt"
    conf["cmvn_conf"]["cmvn_file"] = "global_cmvn"
    conf["dataset_conf"] = {"fbank_conf": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25, "dither": 0.0},
                            "speed_perturb": True, "spec_aug": True,
                            "spec_aug_conf": {"num_t_mask": 2, "num_f_mask": 2, "max_t": 50, "max_f": 10}}
    return conf


def read_split(folder: str) -> list[tuple[str, str, str]]:
    base = os.path.dirname(os.path.abspath(folder))
    with open(os.path.join(folder, "wav.scp"), encoding="utf-8") as f:
        wavs = dict(line.split(maxsplit=1) for line in f if line.strip())
    with open(os.path.join(folder, "text"), encoding="utf-8") as f:
        texts = dict(line.rstrip("\n").split(maxsplit=1) for line in f if len(line.split()) == 2)
    return [(k, w.strip() if os.path.isabs(w.strip()) else os.path.join(base, w.strip()), texts[k])
            for k, w in wavs.items() if k in texts]


def _one_thread() -> None:
    torch.set_num_threads(1)


def _features(args: tuple[str, float]) -> np.ndarray:
    path, speed = args
    samples = load_audio(path)
    if speed != 1.0:  # speed perturbation: resample, as sox's "speed" does
        from scipy.signal import resample_poly

        samples = resample_poly(samples, 10, round(10 * speed)).astype(np.float32)
    return fbank(samples).numpy().astype(np.float16)


def featurize(items, speeds, workers: int) -> list[tuple[torch.Tensor, str, float]]:
    """(fbank, transcript, speed) of each utterance at each speed; utterances too short to subsample are left out."""
    jobs = [(path, speed) for _, path, _ in items for speed in speeds]
    texts = [(text, speed) for _, _, text in items for speed in speeds]
    # spawned, single-threaded workers: forking after torch started its OpenMP pool can deadlock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        feats = list(pool.map(_features, jobs, chunksize=16))
    return [(torch.from_numpy(f), t, speed) for f, (t, speed) in zip(feats, texts) if f.shape[0] >= 7]


def cmvn_stats(feats: list[torch.Tensor]) -> dict:
    x = torch.cat([f.double() for f in feats])
    return {"mean_stat": x.sum(0).tolist(), "var_stat": (x * x).sum(0).tolist(), "frame_num": int(x.shape[0])}


def batches(lengths: np.ndarray, max_frames: int, rng: random.Random) -> list[list[int]]:
    """Length-sorted buckets of at most ``max_frames`` padded frames, in random order."""
    out, current = [], []
    for i in np.argsort(lengths, kind="stable").tolist():  # ascending: the newest is a bucket's longest
        if current and int(lengths[i]) * (len(current) + 1) > max_frames:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    rng.shuffle(out)
    return out


class FeatureBank:
    """Every utterance's fbank in one device tensor: a padded batch is one gather, not a host copy per utterance.

    The training step is otherwise bound by per-utterance host work; 16 h of training features are ~0.9 GB in fp16.
    """

    def __init__(self, feats: list[torch.Tensor], device: str):
        self.lengths = np.array([f.shape[0] for f in feats])
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.frames = torch.cat(feats + [feats[0].new_zeros(1, feats[0].shape[1])]).to(device)
        self.pad_row = self.frames.shape[0] - 1  # the zero row every padded position gathers
        self.device = device

    def batch(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = self.lengths[index]
        t = np.arange(lengths.max())
        rows = np.where(t < lengths[:, None], self.starts[index, None] + t, self.pad_row)
        rows = torch.from_numpy(rows).to(self.device, non_blocking=True)
        return self.frames[rows].float(), torch.from_numpy(lengths).to(self.device, non_blocking=True)


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per utterance two frequency masks of 0-10 bins and two time masks of 0-min(50, length/5) frames, on x's device."""
    b, t, f = x.shape

    def masked(extent: int, max_width: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        """(b, extent) mask of two spans each of a uniform width in [0, max_width] starting uniformly in [0, limit-width]."""
        width = (torch.rand(b, 2, device=x.device, generator=generator) * (max_width + 1)).floor()
        start = (torch.rand(b, 2, device=x.device, generator=generator) * (limit - width + 1).clamp(min=1)).floor()
        pos = torch.arange(extent, device=x.device)
        return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(1)

    lengths = lengths.float()[:, None]
    freq = masked(f, torch.tensor(10.0, device=x.device), torch.tensor(float(f), device=x.device))
    time = masked(t, (lengths / 5).floor().clamp(max=50), lengths)
    return x.masked_fill(freq[:, None, :] | time[:, :, None], 0.0)


def label_smoothing_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """KL(smoothed one-hot || prediction) summed over tokens, per utterance (WeNet's LabelSmoothingLoss)."""
    vocab = logits.shape[-1]
    logp = torch.log_softmax(logits.float(), -1)
    valid = target != IGNORE_ID
    true = torch.full_like(logp, smoothing / (vocab - 1))
    true.scatter_(-1, target.clamp(min=0).unsqueeze(-1), 1.0 - smoothing)
    kl = (true * (true.log() - logp)).sum(-1)
    return (kl * valid).sum() / logits.shape[0]


def pad_tokens(seqs: list[list[int]], prefix: int | None, suffix: int | None, pad: int) -> torch.Tensor:
    rows = [([prefix] if prefix is not None else []) + s + ([suffix] if suffix is not None else []) for s in seqs]
    out = np.full((len(rows), max(len(r) for r in rows)), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


def loss_of(model: ReferenceModel, feats, lengths, tokens: list[list[int]], chunk: int, config) -> tuple:
    """(loss, CTC loss, attention loss, the CTC log-probs (B, T', V) fp32 and their lengths (B,))."""
    encoder_out, mask = model.encoder(feats, lengths, chunk)
    enc_lens = mask.squeeze(1).sum(1)
    log_probs = model.ctc.log_softmax(encoder_out).float()
    targets = torch.tensor(list(itertools.chain.from_iterable(tokens))).to(feats.device, non_blocking=True)
    target_lens = torch.tensor([len(t) for t in tokens]).to(feats.device, non_blocking=True)
    ctc = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, enc_lens, target_lens, blank=0,
                                       reduction="sum", zero_infinity=True) / len(tokens)
    sos, eos = config.sos, config.eos
    device = feats.device
    ys_lens = torch.tensor([len(t) + 1 for t in tokens], device=device)
    left, right = model.decoder.left_decoder, model.decoder.right_decoder
    att = label_smoothing_loss(left(encoder_out, mask, pad_tokens(tokens, sos, None, eos).to(device), ys_lens),
                               pad_tokens(tokens, None, eos, IGNORE_ID).to(device))
    reversed_tokens = [t[::-1] for t in tokens]
    r_att = label_smoothing_loss(right(encoder_out, mask, pad_tokens(reversed_tokens, sos, None, eos).to(device), ys_lens),
                                 pad_tokens(reversed_tokens, None, eos, IGNORE_ID).to(device))
    rw, cw = config.reverse_weight, config.ctc_weight
    att_loss = (1 - rw) * att + rw * r_att
    return cw * ctc + (1 - cw) * att_loss, ctc, att_loss, log_probs, enc_lens


def train(data: str, out: str, minutes: float, device: str, tiny: bool = False, max_steps: int | None = None,
          workers: int = 8, max_frames: int = 40000, lr: float = 1.5e-3, seed: int = 0,
          save_dtype: str = "float16", dropout: float = 0.1, real_repeat: int = 1, min_char_count: int = 2) -> dict:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    start = time.time()
    train_items = read_split(os.path.join(data, "train"))
    synthetic_items = read_split(os.path.join(data, "synthetic")) if os.path.isdir(os.path.join(data, "synthetic")) \
        else []
    missing = [path for _, path, _ in synthetic_items if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} synthetic utterances are not synthesized yet ({missing[0]}): run "
                                f"prepare.py --out {data} --synthesize_only")
    dev_items = read_split(os.path.join(data, "dev"))
    # characters seen fewer than min_char_count times in the transcripts train as <unk>: one example teaches little; each
    # unit costs three 256-wide rows (CTC, decoder embedding and output) of the 40 MB the shipped model may take
    counts = collections.Counter(c for _, _, t in train_items + synthetic_items for c in t)
    chars = sorted(c for c, n in counts.items() if n >= min_char_count)
    vocab = SPECIALS + chars
    ids = {c: i for i, c in enumerate(vocab)}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "units.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{s} {i}\n" for i, s in enumerate(vocab))
    real_ex = featurize(train_items, SPEEDS if not tiny else (1.0,), workers)
    synthetic_ex = featurize(synthetic_items, (1.0,), workers)
    train_ex = real_ex + synthetic_ex
    dev_ex = featurize(dev_items, (1.0,), workers)
    print(f"featurized {len(real_ex)} real, {len(synthetic_ex)} synthetic and {len(dev_ex)} dev utterances in "
          f"{time.time() - start:.0f} s", flush=True)
    with open(os.path.join(out, "global_cmvn"), "w") as f:
        json.dump(cmvn_stats([x for x, _, speed in train_ex if speed == 1.0]), f)
    with open(os.path.join(out, "train.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(model_yaml(len(vocab), tiny, dropout), f, allow_unicode=True, sort_keys=False)
    config = load_config(os.path.join(out, "train.yaml"))
    from weights.files import load_cmvn

    model = ReferenceModel(config)
    mean, istd = load_cmvn(os.path.join(out, "global_cmvn"))
    model.encoder.global_cmvn.mean.copy_(torch.from_numpy(mean).float())
    model.encoder.global_cmvn.istd.copy_(torch.from_numpy(istd).float())
    for m in model.modules():  # reference.py's sublayer-output dropouts (it has no attention dropout)
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    # fused: one kernel for all parameters instead of several per parameter
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9, fused=True)
    warmup = 800

    def lr_at(step: int) -> float:
        return min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    to_ids = [[ids.get(c, 1) for c in t] for _, t, _ in train_ex]
    bank = FeatureBank([x for x, _, _ in train_ex], device)
    # an epoch: every real utterance (at each speed) real_repeat times, every synthetic one once
    epoch_index = np.concatenate([np.tile(np.arange(len(real_ex)), real_repeat), np.arange(len(real_ex), len(train_ex))])
    epoch_lengths = bank.lengths[epoch_index]
    step, epoch, snapshots, log = 0, 0, [], []
    budget = minutes * 60
    deadline = start + budget
    while time.time() < deadline and (max_steps is None or step < max_steps):
        epoch += 1
        for positions in batches(epoch_lengths, max_frames, rng):
            batch = epoch_index[positions].tolist()
            feats, lengths = bank.batch(batch)
            feats = spec_augment(feats, lengths, generator)
            full = rng.random() < 0.5
            chunk = 0 if full else rng.randint(1, 25)
            with autocast:
                loss, ctc, att, _, _ = loss_of(model, feats, lengths, [to_ids[i] for i in batch], chunk, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step} epoch {epoch} loss {loss.item():.2f} ctc {ctc.item():.2f} att {att.item():.2f} "
                      f"lr {scheduler.get_last_lr()[0]:.2e} {time.time() - start:.0f}s", flush=True)
            if time.time() >= deadline or (max_steps is not None and step >= max_steps):
                break
        dev_loss, dev_cer = evaluate(model, dev_ex, ids, config, device, autocast) if dev_ex else (math.nan, math.nan)
        log.append({"epoch": epoch, "step": step, "dev_loss": dev_loss, "dev_cer": dev_cer,
                    "seconds": round(time.time() - start)})
        print(f"epoch {epoch} step {step} dev loss {dev_loss:.2f} greedy CER {100 * dev_cer:.2f} %", flush=True)
        # keep the last snapshots of the final fifth of the budget for averaging
        if time.time() > start + 0.8 * budget or (max_steps is not None and step >= max_steps):
            snapshots.append({k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()})
            snapshots = snapshots[-5:]
    averaged = {k: sum(s[k] for s in snapshots) / len(snapshots) if snapshots[0][k].is_floating_point()
                else snapshots[-1][k] for k in snapshots[0]}
    saved = {k: v.to(getattr(torch, save_dtype)) if v.is_floating_point() else v for k, v in averaged.items()}
    torch.save(saved, os.path.join(out, "final.pt"))
    model.load_state_dict(saved)  # what was saved, rounding included, is what the dev figures describe
    final_loss, final_cer = evaluate(model, dev_ex, ids, config, device, autocast) if dev_ex else (math.nan, math.nan)
    summary = {"parameters": params, "steps": step, "epochs": epoch, "averaged": len(snapshots),
               "final_dev_loss": final_loss, "final_dev_cer": final_cer,
               "max_frames": max_frames, "lr": lr, "dropout": dropout,
               "real_repeat": real_repeat, "train_utterances": len(train_ex),
               "epoch_utterances": len(epoch_index), "epoch_hours": float(epoch_lengths.sum()) / 360000,
               "synthetic_hours": sum(x.shape[0] for x, _, _ in synthetic_ex) / 360000,
               "seconds": round(time.time() - start), "device": torch.cuda.get_device_name() if device.startswith(
                   "cuda") else "cpu", "torch": torch.__version__, "log": log}
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


@torch.no_grad()
def evaluate(model, examples, ids, config, device, autocast) -> tuple[float, float]:
    """Mean loss per utterance and the CTC greedy search's character error rate (full context)."""
    import jiwer

    model.eval()
    total, count = 0.0, 0
    vocab = {i: c for c, i in ids.items()}
    refs, hyps = [], []
    for start in range(0, len(examples), 32):
        chunk = examples[start:start + 32]
        lengths = torch.tensor([x.shape[0] for x, _, _ in chunk])
        feats = torch.zeros(len(chunk), int(lengths.max()), 80)
        for j, (x, _, _) in enumerate(chunk):
            feats[j, :x.shape[0]] = x.float()
        with autocast:
            loss, _, _, log_probs, enc_lens = loss_of(model, feats.to(device), lengths.to(device),
                                                      [[ids.get(c, 1) for c in t] for _, t, _ in chunk], 0, config)
        for frames, n, (_, text, _) in zip(log_probs.cpu(), enc_lens.tolist(), chunk):
            tokens = model.ctc_greedy_search(frames, n).tokens
            hyps.append("".join(vocab.get(t, "") for t in tokens) or " ")  # jiwer refuses an empty hypothesis
            refs.append(text)
        total += loss.item() * len(chunk)
        count += len(chunk)
    model.train()
    return total / max(count, 1), jiwer.cer(refs, hyps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=".data/demo")
    p.add_argument("--out", default="exp/demo")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny model, for tests")
    p.add_argument("--max_steps", type=int)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--max_frames", type=int, default=40000, help="padded fbank frames per batch")
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (after warm-up)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of each sublayer's output")
    p.add_argument("--real_repeat", type=int, default=1, help="times each real utterance is seen per epoch")
    p.add_argument("--min_char_count", type=int, default=2, help="rarer characters train as <unk>")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    summary = train(args.data, args.out, args.minutes, args.device, args.tiny, args.max_steps, args.workers,
                    args.max_frames, args.lr, args.seed, dropout=args.dropout, real_repeat=args.real_repeat,
                    min_char_count=args.min_char_count)
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}))


if __name__ == "__main__":
    main()
