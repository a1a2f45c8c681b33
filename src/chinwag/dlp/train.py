"""A first multi-task training loop for the DLP scanner (issue 8, "Training").

One step: a batch of serialized documents goes through `DLPModel` in fixed segments (the slow state is
detached between them: HRM's one-step gradient), and the loss is

    L = mean over segments of BCE(doc logits of that prefix, smoothed targets)   # deep supervision
      + CE(BIO tags per token)  + BCE(flags)

AdamW (0.9, 0.95), linear warmup then cosine decay, optional bf16 autocast on CPU. Not here yet (see
docs/dlp.md): the mask-denoise and section-shuffle auxiliary losses, the 512 -> 1024 curriculum, gradient
accumulation by token budget, and temperature calibration.

Documents longer than `max_len` tokens are truncated (a first version; spans past the cut are not
scored, but the document targets are those of the whole document). Evaluation decodes BIO tags back to
field spans with the tokenizer's `bio_to_spans` and compares them to the gold spans, exact match.

Artifacts in `out_dir` (each written atomically): `model.safetensors`, `config.json` (the DLPConfig),
`train_config.json`, `metrics.jsonl` (one line per evaluation).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from chinwag.dlp.dsl import Serialized, is_content_field, serialize
from chinwag.dlp.labels import LABELS, Span
from chinwag.dlp.model import DOC_HEADS, DLPConfig, DLPModel, get_dlp_config
from chinwag.dlp.policy import document_labels
from chinwag.dlp.tokenizer import DLPTokenizer, Encoding, bio_tags, bio_to_spans, span_to_tokens
from chinwag.utils import atomic_write_text, seed_everything, write_json

WEIGHTS, CONFIG, TRAIN_CONFIG, METRICS = (
    "model.safetensors",
    "config.json",
    "train_config.json",
    "metrics.jsonl",
)

# which gold labels (in content fields) turn each model flag on; a flag not listed here is always 0
FLAG_LABELS = {
    "has_pan": {"PAN"},
    "has_ssn": {"SSN"},
    "has_secret": {"SECRET_KEY"},
    "has_db_uri": {"DB_URI"},
    "has_nda": {"NDA_TERM"},
    "has_matter": {"MATTER_ID"},
    "has_pii": {"NAME", "ADDRESS", "PHONE", "EMAIL"},
}


# --- data ---


@dataclass
class DLPDataset:
    """Padded tensors for N documents plus what evaluation needs to turn tags back into field spans."""

    ids: torch.Tensor  # [N, L] long (0 on padding, never read: masked)
    mask: torch.Tensor  # [N, L] bool, True = real token
    bio: torch.Tensor  # [N, L] long BIO tag ids, -100 on padding
    doc: torch.Tensor  # [N, 4] float, DOC_HEADS order
    flags: torch.Tensor  # [N, n_flags] float
    sers: list[Serialized]
    encs: list[Encoding]  # truncated to max_len
    gold: list[list[Span]]  # the gold spans whose tokens all fit in the truncated window

    def __len__(self) -> int:
        return self.ids.shape[0]


def flag_targets(spans, flags=tuple(FLAG_LABELS)) -> list[float]:
    content = {s.label for s in spans if is_content_field(s.field)}
    return [float(bool(FLAG_LABELS.get(f, set()) & content)) for f in flags]


def build_dataset(examples, tok: DLPTokenizer, max_len: int, flags=tuple(FLAG_LABELS)) -> DLPDataset:
    """Serialize, encode (truncating to `max_len` tokens), tag, and pad to the longest kept document."""
    rows, sers, encs, gold = [], [], [], []
    for ex in examples:
        ser = serialize(ex.doc)
        full = tok.encode(ser.text)
        enc = Encoding(full.ids[:max_len], full.offsets[:max_len])
        tags = bio_tags(ser, full, ex.spans)[:max_len]  # tag on the full encoding, then cut: no half-spans
        heads = document_labels(ex.doc, ex.spans, ex.obfuscated).heads()
        rows.append((enc.ids, tags, [heads[h] for h in DOC_HEADS], flag_targets(ex.spans, flags)))
        sers.append(ser)
        encs.append(enc)
        gold.append([s for s in ex.spans if 0 <= span_to_tokens(ser, full, s)[1] <= max_len])
    n, L = len(rows), max((len(r[0]) for r in rows), default=1)
    ids = torch.zeros(n, L, dtype=torch.long)
    bio = torch.full((n, L), -100, dtype=torch.long)
    mask = torch.zeros(n, L, dtype=torch.bool)
    for i, (t_ids, tags, _, _) in enumerate(rows):
        ids[i, : len(t_ids)] = torch.tensor(t_ids, dtype=torch.long)
        bio[i, : len(tags)] = torch.tensor(tags, dtype=torch.long)
        mask[i, : len(t_ids)] = True
    doc = torch.tensor([r[2] for r in rows], dtype=torch.float).reshape(n, len(DOC_HEADS))
    flg = torch.tensor([r[3] for r in rows], dtype=torch.float).reshape(n, len(flags))
    return DLPDataset(ids, mask, bio, doc, flg, sers, encs, gold)


def _batch(ds: DLPDataset, idx: torch.Tensor, multiple: int):
    """Rows `idx`, trimmed to the batch's longest document rounded up to `multiple` (a pool/segment size)."""
    m = ds.mask[idx]
    L = int(m.sum(1).max())
    L = min(ds.ids.shape[1], max(multiple, -(-L // multiple) * multiple))
    return ds.ids[idx, :L], m[:, :L], ds.bio[idx, :L], ds.doc[idx], ds.flags[idx]


# --- training ---


@dataclass
class DLPTrainConfig:
    model: str = "dlp-tiny"  # preset name (chinwag.dlp.model.DLP_PRESETS)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"d": 128, "n_layers": 4}; vocab_size is set
    max_len: int = 512
    segment_len: int | None = 256  # a multiple of the model's pool_every; None = one segment
    batch_size: int = 8
    steps: int = 200
    max_seconds: float | None = None  # stop early when the wall-clock budget is spent
    lr: float = 3e-4
    min_lr_frac: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    label_smoothing: float = 0.05
    bio_weight: float = 1.0
    flag_weight: float = 1.0
    bf16: bool = False  # bf16 autocast on CPU
    eval_every: int = 100
    eval_batch_size: int = 16
    seed: int = 0
    out_dir: str | None = None


def lr_at(step: int, cfg: DLPTrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine to cfg.lr * min_lr_frac at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def dlp_loss(out, bio, doc, flags, cfg: DLPTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    eps = cfg.label_smoothing
    doc_t = doc * (1 - eps) + 0.5 * eps  # smoothing toward 0.5: a calibrated head is never fully sure
    segs = out.per_segment_doc_logits
    l_doc = sum(F.binary_cross_entropy_with_logits(z.float(), doc_t) for z in segs) / len(segs)
    l_bio = F.cross_entropy(out.bio_logits.float().flatten(0, 1), bio.flatten(), ignore_index=-100)
    l_flag = F.binary_cross_entropy_with_logits(out.flag_logits.float(), flags)
    loss = l_doc + cfg.bio_weight * l_bio + cfg.flag_weight * l_flag
    return loss, {"doc": l_doc.item(), "bio": l_bio.item(), "flag": l_flag.item()}


def _optimizer(model: DLPModel, cfg: DLPTrainConfig) -> torch.optim.AdamW:
    # no weight decay on norms, biases, the slow seed (1-d tensors); decay matrices and embeddings
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def train_dlp(cfg: DLPTrainConfig, train_examples, val_examples, tok: DLPTokenizer) -> dict:
    """Train from scratch; returns {"model", "config", "history" (one dict per eval), "final", "tokens_per_s",
    "train_seconds", "steps"}. Writes artifacts to cfg.out_dir when set."""
    seed_everything(cfg.seed)
    mcfg = get_dlp_config(cfg.model, **{**cfg.model_overrides, "vocab_size": tok.vocab_size})
    seg = cfg.segment_len
    if seg is not None and (seg <= 0 or seg % mcfg.pool_every):
        raise ValueError(
            f"segment_len must be a positive multiple of pool_every={mcfg.pool_every}, got {seg}"
        )
    train = build_dataset(train_examples, tok, cfg.max_len, mcfg.flags)
    val = build_dataset(val_examples, tok, cfg.max_len, mcfg.flags)
    model = DLPModel(mcfg)
    opt = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    multiple = seg or mcfg.pool_every
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    history: list[dict] = []
    tokens, train_time, step, t_start = 0, 0.0, 0, time.perf_counter()
    order, pos = torch.randperm(len(train), generator=gen), 0
    while step < cfg.steps:
        if pos + cfg.batch_size > len(order):  # a new epoch: reshuffle
            order, pos = torch.randperm(len(train), generator=gen), 0
        ids, mask, bio, doc, flags = _batch(train, order[pos : pos + cfg.batch_size], multiple)
        pos += cfg.batch_size
        t0 = time.perf_counter()
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model(ids, mask, segment_len=seg, detach_between_segments=True)
        loss, parts = dlp_loss(out, bio, doc, flags, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        train_time += time.perf_counter() - t0
        tokens += int(mask.sum())
        step += 1
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            rec = {"step": step, "lr": lr_at(step - 1, cfg), "loss": loss.item()}
            rec.update({f"loss_{k}": v for k, v in parts.items()})
            rec["tokens_per_s"] = tokens / max(train_time, 1e-9)
            rec.update({f"val_{k}": v for k, v in evaluate(model, val, cfg).items() if k != "per_label"})
            history.append(rec)
            if out_dir:  # rewrite the whole log atomically: a crash never leaves a torn line
                atomic_write_text(out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))
        if out_of_time:
            break
    final = evaluate(model, val, cfg)
    if out_dir:
        save_dlp(model, out_dir)
        write_json(out_dir / TRAIN_CONFIG, asdict(cfg))
    return {"model": model, "config": mcfg, "history": history, "final": final, "steps": step,
            "tokens_per_s": tokens / max(train_time, 1e-9), "train_seconds": train_time}  # fmt: skip


# --- evaluation ---


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"p": p, "r": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": tp + fn}


@torch.no_grad()
def evaluate(model: DLPModel, ds: DLPDataset, cfg: DLPTrainConfig) -> dict:
    """BIO accuracy on gold non-O tokens, exact span P/R/F1 (micro and per label), per-head and per-flag
    accuracy at 0.5."""
    model.eval()
    seg = cfg.segment_len
    multiple = seg or model.config.pool_every
    tp, fp, fn = Counter(), Counter(), Counter()
    tag_ok = tag_n = 0
    head_ok = torch.zeros(len(DOC_HEADS))
    flag_ok = torch.zeros(model.config.n_flags)
    for a in range(0, len(ds), cfg.eval_batch_size):
        idx = torch.arange(a, min(a + cfg.eval_batch_size, len(ds)))
        ids, mask, bio, doc, flags = _batch(ds, idx, multiple)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model(ids, mask, segment_len=seg)
        pred = out.bio_logits.float().argmax(-1)
        ent = bio > 0  # gold non-O (padding is -100)
        tag_ok += int((pred[ent] == bio[ent]).sum())
        tag_n += int(ent.sum())
        head_ok += ((out.doc_logits.float() > 0).float() == doc).float().sum(0)
        flag_ok += ((out.flag_logits.float() > 0).float() == flags).float().sum(0)
        for r, i in enumerate(idx.tolist()):
            n = len(ds.encs[i])
            got = set(bio_to_spans(ds.sers[i], ds.encs[i], pred[r, :n].tolist()))
            want = set(ds.gold[i])
            for s in got & want:
                tp[s.label] += 1
            for s in got - want:
                fp[s.label] += 1
            for s in want - got:
                fn[s.label] += 1
    micro = _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    n = max(len(ds), 1)
    res = {
        "bio_entity_token_acc": tag_ok / max(tag_n, 1),
        "span_p": micro["p"],
        "span_r": micro["r"],
        "span_f1": micro["f1"],
        **{f"acc_{h}": float(head_ok[k]) / n for k, h in enumerate(DOC_HEADS)},
        **{f"acc_{f}": float(flag_ok[k]) / n for k, f in enumerate(model.config.flags)},
        "per_label": {lab: _prf(tp[lab], fp[lab], fn[lab]) for lab in LABELS},
    }
    return res


# --- persistence: safetensors + config JSON, both atomic, no pickle ---


def save_dlp(model: DLPModel, folder: str | Path) -> Path:
    from chinwag.model.io import save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(sd, folder / WEIGHTS)
    model.config.save(folder / CONFIG)
    return folder


def load_dlp(folder: str | Path) -> DLPModel:
    from chinwag.model.io import load_state_file

    folder = Path(folder)
    model = DLPModel(DLPConfig.load(folder / CONFIG))
    missing, unexpected = model.load_state_dict(load_state_file(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS}: weights do not match config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")  # fmt: skip
    return model.eval()
