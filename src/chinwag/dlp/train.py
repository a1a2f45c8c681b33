"""Multi-task training of the DLP scanner (issue 8, "Training").

One optimizer step gathers documents until a token budget is met (gradient accumulation), sorts them by
length into micro-batches (little padding), and runs each micro-batch through `DLPModel` in fixed segments
with the slow state detached between them (HRM's one-step gradient). The loss is

    L = doc BCE (label smoothing 0.05, averaged over each document's own segments: deep supervision)
      + CE(BIO tags) + BCE(flags)                                   <- clean rows only
      + 0.3 * mask-denoise CE + 0.2 * section-shuffle BCE          <- auxiliary rows only

Clean vs corrupted rows. Each document of a step is independently an *auxiliary row* with probability
`aux_frac` (0.25), else a *clean row*. Clean rows are the text as it is and carry the main losses, so the
BIO, doc and flag heads only ever learn from uncorrupted documents (a masked digit would make a PAN's tags
unknowable; a swap can cut a value split across lines). Auxiliary rows carry only the two auxiliary losses:
with p = 0.5 two lines are swapped (the shuffle target), and then 15 % of the non-marker tokens are replaced
by the learned [MASK] vector (the denoise target is the token that was there). Every auxiliary row is
masked, shuffled or not, so the presence of [MASK] says nothing about the shuffle label. Each loss is a sum
over its own rows (or tokens) divided by the step's total count of them, so the weights 0.3 / 0.2 keep their
meaning and the gradient of a step does not depend on how it was cut into micro-batches. The price: a
quarter of the compute goes to the auxiliary tasks.

Curriculum: with `phase1_frac > 0`, the first steps use the easy documents (the caller's `phase1_examples`,
or the training documents with no obfuscated value and no hard negative) at window `phase1_max_len` (512);
the rest use all training documents at window `max_len` (1024). Evaluation and calibration use `max_len`.

Checkpoints (`checkpoints/step_XXXXXXX/`, written in a temp folder and renamed, with a sha256 manifest):
weights, AdamW state, and a trainer state with the step, the planned step count, both data streams' order
and position, the data generator and the global RNG states, token and time counters and the eval history.
`train_dlp(..., resume=True)` continues from the newest valid one and gives the same weights, bit for bit,
as a run that was never stopped (tested). Without `steps`, the run is budgeted in training time
(`max_seconds`): the cosine and the curriculum switch follow the share of that time spent, so a CPU that
gets busier mid-run stretches the run instead of cutting the schedule short. Such a run resumes on the same
clock (the time spent is checkpointed) but not bit for bit; give `steps` when exactness matters.

Documents longer than the window are truncated (spans past the cut are not scored, but the document
targets are those of the whole document). Evaluation decodes BIO tags back to field spans with the
tokenizer's `bio_to_spans` and compares them to the gold spans, exact match.

Run folder (each file written atomically): `model.safetensors` + `config.json` (the DLPConfig),
`tokenizer.json`, `train_config.json` (this DLPTrainConfig, `steps` resolved), `metrics.jsonl` (one line per
evaluation), `calib.json` (see `chinwag.dlp.calibrate`) and `checkpoints/`.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from chinwag.dlp.dsl import Serialized, is_content_field, serialize
from chinwag.dlp.labels import LABELS, Span
from chinwag.dlp.model import DOC_HEADS, DLPConfig, DLPModel, get_dlp_config
from chinwag.dlp.policy import document_labels
from chinwag.dlp.tokenizer import (
    DLPTokenizer,
    Encoding,
    bio_tags,
    bio_to_spans,
    marker_symbols,
    span_to_tokens,
)
from chinwag.utils import atomic_write_text, iter_jsonl, read_json, seed_everything, write_json

WEIGHTS, CONFIG, TRAIN_CONFIG, METRICS = (
    "model.safetensors",
    "config.json",
    "train_config.json",
    "metrics.jsonl",
)
TOKENIZER, CHECKPOINTS = "tokenizer.json", "checkpoints"

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


def read_examples(path: str | Path) -> list:
    """Examples from a JSONL written by `chinwag dlp synth` (document fields + `spans` + `hard_negatives`).
    Raises ValueError naming the file, line and field."""
    from chinwag.dlp.synth import example_from_record

    out = [example_from_record(rec, where) for where, rec in iter_jsonl(path)]
    if not out:
        raise ValueError(f"{path}: no documents")
    return out


def is_easy(example) -> bool:
    """Curriculum phase 1 without a difficulty knob: no obfuscated value and no hard negative."""
    return not example.obfuscated and not example.hard_negatives


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


def build_dataset(
    examples,
    tok: DLPTokenizer,
    max_len: int,
    flags=tuple(FLAG_LABELS),
    progress: Callable | None = None,
    hints: bool = False,
) -> DLPDataset:
    """Serialize, encode (truncating to `max_len` tokens), tag, and pad to the longest kept document.
    `progress` optionally wraps the example iterable (e.g. rich's `track`); `hints` packs the lexical
    hints into the ids (for a model with `n_hints`)."""
    from chinwag.dlp.hints import with_hints

    rows, sers, encs, gold = [], [], [], []
    for ex in progress(examples) if progress else examples:
        ser = serialize(ex.doc)
        full = tok.encode(ser.text)
        if hints:
            full = Encoding(with_hints(full.ids, ser.text, full.offsets, tok.vocab_size), full.offsets)
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


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _batch(ds: DLPDataset, idx: torch.Tensor, multiple: int):
    """Rows `idx`, trimmed to the batch's longest document rounded up to `multiple` (a pool/segment size)."""
    m = ds.mask[idx]
    L = min(ds.ids.shape[1], _round_up(int(m.sum(1).max()), multiple))
    return ds.ids[idx, :L], m[:, :L], ds.bio[idx, :L], ds.doc[idx], ds.flags[idx]


# --- training config ---


@dataclass
class DLPTrainConfig:
    model: str = "dlp-tiny"  # preset name (chinwag.dlp.model.DLP_PRESETS)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"d": 128, "n_layers": 4}; vocab_size is set
    max_len: int = 1024  # the window of the main phase, of evaluation, calibration and scanning
    segment_len: int | None = 256  # a multiple of the model's pool_every; None = one segment
    batch_size: int = 8  # most documents in one micro-batch
    tokens_per_step: int | None = (
        None  # accumulate micro-batches to this many real tokens; None = batch_size docs
    )
    micro_tokens: int = 8192  # most padded tokens in one micro-batch (bounds activation memory)
    steps: int | None = 200  # None: the schedule follows the time budget, max_seconds
    max_seconds: float | None = None  # training-time budget (steps only, not evals); always a hard stop
    lr: float = 3e-4
    min_lr_frac: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    label_smoothing: float = 0.05
    bio_weight: float = 1.0
    flag_weight: float = 1.0
    # auxiliary losses (training only; see the module docstring)
    aux_frac: float = 0.25  # chance that a document becomes an auxiliary (masked, maybe shuffled) row
    mask_rate: float = 0.15  # of the non-marker tokens of an auxiliary row
    shuffle_prob: float = 0.5  # chance that an auxiliary row has two lines swapped
    denoise_weight: float = 0.3
    shuffle_weight: float = 0.2
    # curriculum
    phase1_frac: float = 0.0  # share of the steps on easy documents at phase1_max_len; 0 = no curriculum
    phase1_max_len: int = 512
    bf16: bool = True  # bf16 autocast on CPU (2-2.6x faster than fp32 here, see docs/dlp.md)
    eval_every: int = 100
    eval_batch_size: int = 16
    ckpt_every: int = 100  # 0 = no checkpoints
    keep_checkpoints: int = 2
    seed: int = 0
    out_dir: str | None = None
    data: dict = field(default_factory=dict)  # where the documents came from (set by the CLI; for resume)

    def validate(self) -> None:
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ValueError(f"train config field {name!r}: {msg} (got {getattr(self, name)!r})")

        for name in (
            "max_len",
            "phase1_max_len",
            "batch_size",
            "micro_tokens",
            "eval_every",
            "eval_batch_size",
        ):
            need(
                isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                name,
                "must be a positive integer",
            )
        need(self.steps is None or self.steps > 0, "steps", "must be positive or None")
        need(self.steps is not None or bool(self.max_seconds), "steps", "None needs max_seconds")
        need(self.tokens_per_step is None or self.tokens_per_step > 0, "tokens_per_step", "must be positive")
        for name in ("aux_frac", "mask_rate", "shuffle_prob", "phase1_frac"):
            need(0.0 <= getattr(self, name) < 1.0 or name == "shuffle_prob" and self.shuffle_prob == 1.0,
                 name, "must be in [0, 1)")  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict, where: str = "<dict>") -> DLPTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{where}: unknown train config field(s) {', '.join(sorted(unknown))}")
        return cls(**d)


def lr_at(step: int, cfg: DLPTrainConfig, progress: float | None = None) -> float:
    """Linear warmup to cfg.lr over cfg.warmup steps, then cosine to cfg.lr * min_lr_frac: at cfg.steps, or,
    given `progress` (the spent share of a time budget), when progress reaches 1."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if progress is None:
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    else:
        t = progress
    t = min(1.0, max(0.0, t))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def _progress(cfg: DLPTrainConfig, state: dict) -> float:
    """Share of the run done: by steps when cfg.steps is set (deterministic: exact resume), else by the
    training time spent out of cfg.max_seconds (follows the machine's real speed, so a busy CPU does not cut
    the cosine short; a resumed run continues the same clock but is not bit-identical)."""
    if cfg.steps:
        return state["step"] / cfg.steps
    return state["train_seconds"] / cfg.max_seconds


# --- corruption for the auxiliary losses ---


def structural_ids(tok: DLPTokenizer) -> list[int]:
    """Ids never masked: the field markers (single tokens by construction) and the newline."""
    unk = tok.sp.unk_id()
    return sorted({i for i in (tok.piece_to_id(s) for s in marker_symbols() + ["\n"]) if i != unk})


def swap_lines(ids: torch.Tensor, newline_id: int, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """Swap two random lines (token runs ending in a newline), never the `<|doc ...|>` header line.
    Returns the new ids and 1.0, or the ids unchanged and 0.0 when there are fewer than two lines to swap or
    the two lines are identical (then nothing changed, so the honest target is 0)."""
    ends = ((ids == newline_id).nonzero()[:, 0] + 1).tolist()
    bounds = [0] + ends + ([len(ids)] if not ends or ends[-1] < len(ids) else [])
    lines = list(zip(bounds[1:-1], bounds[2:], strict=True))  # skip line 0, the header
    if len(lines) < 2:
        return ids, 0.0
    a, b = sorted(torch.randperm(len(lines), generator=gen)[:2].tolist())
    (sa, ea), (sb, eb) = lines[a], lines[b]
    if torch.equal(ids[sa:ea], ids[sb:eb]):
        return ids, 0.0
    return torch.cat([ids[:sa], ids[sb:eb], ids[ea:sb], ids[sa:ea], ids[eb:]]), 1.0


@dataclass
class _Row:
    index: int  # into the dataset
    ids: torch.Tensor  # [n] the (possibly corrupted) real tokens
    aux: bool
    shuffled: float = 0.0
    masked: torch.Tensor | None = None  # [n] bool, aux rows only


def _plan_row(
    ds: DLPDataset, i: int, cfg: DLPTrainConfig, gen, struct: torch.Tensor, newline_id: int
) -> _Row:
    n = int(ds.mask[i].sum())
    ids = ds.ids[i, :n]
    aux = cfg.aux_frac > 0 and float(torch.rand((), generator=gen)) < cfg.aux_frac
    if not aux:
        return _Row(i, ids, False)
    shuffled = 0.0
    if float(torch.rand((), generator=gen)) < cfg.shuffle_prob:
        ids, shuffled = swap_lines(ids, newline_id, gen)
    masked = (torch.rand(n, generator=gen) < cfg.mask_rate) & ~torch.isin(ids, struct)
    return _Row(i, ids, True, shuffled, masked)


def _micro_batches(rows: list[_Row], cfg: DLPTrainConfig, multiple: int) -> list[list[_Row]]:
    """Sort by length and cut greedily: at most batch_size rows and micro_tokens padded tokens each."""
    out: list[list[_Row]] = []
    for r in sorted(rows, key=lambda r: len(r.ids)):
        L = _round_up(len(r.ids), multiple)
        if out and len(out[-1]) < cfg.batch_size and (len(out[-1]) + 1) * L <= cfg.micro_tokens:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _collate(ds: DLPDataset, rows: list[_Row], multiple: int) -> dict:
    B, L = len(rows), _round_up(max(len(r.ids) for r in rows), multiple)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.bool)
    bio = torch.full((B, L), -100, dtype=torch.long)
    masked = torch.zeros(B, L, dtype=torch.bool)
    for r, row in enumerate(rows):
        n = len(row.ids)
        ids[r, :n], mask[r, :n] = row.ids, True
        if row.aux:
            masked[r, :n] = row.masked
        else:  # only clean rows carry BIO targets
            bio[r, :n] = ds.bio[row.index, :n]
    idx = torch.tensor([r.index for r in rows])
    return {
        "ids": ids, "mask": mask, "bio": bio, "masked": masked, "doc": ds.doc[idx], "flags": ds.flags[idx],
        "clean": torch.tensor([not r.aux for r in rows]), "aux": torch.tensor([r.aux for r in rows]),
        "shuffled": torch.tensor([r.shuffled for r in rows]),
    }  # fmt: skip


# --- losses ---


def loss_sums(model: DLPModel, out, batch: dict, cfg: DLPTrainConfig) -> dict[str, torch.Tensor]:
    """Per-term loss *sums* over the rows/tokens each term covers (divide by the step's counts):
    doc and flag over clean rows, BIO over clean real tokens, denoise over masked tokens, shuffle over aux
    rows. A document's doc loss is the mean over its own segments (deep supervision on each prefix), so a
    short document padded next to a long one is not counted several times."""
    clean = batch["clean"].float()
    eps = cfg.label_smoothing
    doc_t = batch["doc"] * (1 - eps) + 0.5 * eps  # smoothing toward 0.5: a calibrated head is never sure
    segs = out.per_segment_doc_logits
    seg_len = cfg.segment_len or batch["ids"].shape[1]
    n_seg = ((batch["mask"].sum(1) + seg_len - 1) // seg_len).clamp(min=1)  # [B] this row's segments
    per = torch.stack(
        [F.binary_cross_entropy_with_logits(z.float(), doc_t, reduction="none").mean(-1) for z in segs], 1
    )  # [B, S]
    own = torch.arange(len(segs))[None] < n_seg[:, None]
    doc_row = (per * own).sum(1) / n_seg
    flag_row = F.binary_cross_entropy_with_logits(out.flag_logits.float(), batch["flags"], reduction="none")
    sums = {
        "doc": (doc_row * clean).sum(),
        "flag": (flag_row.mean(-1) * clean).sum(),
        "bio": F.cross_entropy(
            out.bio_logits.float().flatten(0, 1), batch["bio"].flatten(), ignore_index=-100, reduction="sum"
        ),
    }
    m = batch["masked"]
    if m.any():
        logits = model.denoise_logits(out.hidden[m]).float()
        target = batch["ids"][m] % model.config.vocab_size  # the token, without its packed hint
        sums["denoise"] = F.cross_entropy(logits, target, reduction="sum")
    if batch["aux"].any():
        shuf = F.binary_cross_entropy_with_logits(
            out.shuffle_logits.float(), batch["shuffled"], reduction="none"
        )
        sums["shuffle"] = (shuf * batch["aux"].float()).sum()
    return sums


def loss_counts(batch: dict) -> dict[str, int]:
    n_clean = int(batch["clean"].sum())
    return {"doc": n_clean, "flag": n_clean, "bio": int((batch["bio"] != -100).sum()),
            "denoise": int(batch["masked"].sum()), "shuffle": int(batch["aux"].sum())}  # fmt: skip


def loss_weights(cfg: DLPTrainConfig) -> dict[str, float]:
    return {"doc": 1.0, "flag": cfg.flag_weight, "bio": cfg.bio_weight, "denoise": cfg.denoise_weight,
            "shuffle": cfg.shuffle_weight}  # fmt: skip


def dlp_loss(out, bio, doc, flags, cfg: DLPTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The main loss of clean documents (doc + BIO + flags, as in training) from targets alone."""
    mask = bio != -100
    none = torch.zeros(len(bio), dtype=torch.bool)
    batch = {"clean": ~none, "aux": none, "doc": doc, "flags": flags, "bio": bio, "mask": mask, "ids": bio,
             "masked": torch.zeros_like(mask)}  # fmt: skip
    sums, counts, w = loss_sums(None, out, batch, cfg), loss_counts(batch), loss_weights(cfg)
    parts = {k: v / max(counts[k], 1) for k, v in sums.items()}
    loss = sum(w[k] * v for k, v in parts.items())
    return loss, {k: v.item() for k, v in parts.items()}


def _optimizer(model: DLPModel, cfg: DLPTrainConfig) -> torch.optim.AdamW:
    # no weight decay on norms, biases, the slow seed (1-d tensors); decay matrices and embeddings
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


# --- checkpoints ---


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def save_checkpoint(run_dir: Path, model: DLPModel, opt, state: dict) -> Path:
    """`run_dir/checkpoints/step_XXXXXXX/`: built in a temp folder, manifest last, then renamed into place."""
    import os
    import shutil

    from safetensors.torch import save_file

    from chinwag.train.checkpoint import optimizer_to_tensors, step_name, write_manifest

    folder = Path(run_dir) / CHECKPOINTS / step_name(state["step"])
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_dlp(model, tmp)
        tensors, meta = optimizer_to_tensors(opt.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "trainer_state.json", state)
        write_manifest(tmp)
        if folder.exists():  # a folder cannot be renamed over a non-empty one
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose manifest checks out (broken newer ones are skipped), or None."""
    from chinwag.train.checkpoint import latest_valid_checkpoint, list_checkpoints

    if not list_checkpoints(Path(run_dir)):
        return None
    return latest_valid_checkpoint(Path(run_dir))


# --- the training loop ---


def _take(stream: dict, n: int, gen: torch.Generator) -> int:
    """Next document index of a data stream; a new shuffled order at each epoch."""
    if stream["pos"] >= len(stream["order"]):
        stream["order"], stream["pos"] = torch.randperm(n, generator=gen).tolist(), 0
        stream["epoch"] += 1
    i = stream["order"][stream["pos"]]
    stream["pos"] += 1
    return i


def train_dlp(
    cfg: DLPTrainConfig,
    train_examples,
    val_examples,
    tok: DLPTokenizer,
    phase1_examples=None,
    *,
    resume: bool = False,
    callback: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
    progress: Callable | None = None,
) -> dict:
    """Train from scratch (or resume from `cfg.out_dir`'s newest checkpoint). Returns {"model", "config",
    "history" (one dict per eval), "final", "steps", "tokens_per_s", "train_seconds", "stopped"}.

    `callback(info)` runs after every step (info: step, steps, phase, loss, tokens_per_s, and the last
    val_span_f1). `stop_after=N` returns right after step N without saving anything, as if the process had
    been killed there (for resume tests). With cfg.out_dir set, writes the run folder (module docstring)."""
    cfg.validate()
    seed_everything(cfg.seed)
    mcfg = get_dlp_config(cfg.model, **{**cfg.model_overrides, "vocab_size": tok.vocab_size})
    seg = cfg.segment_len
    if seg is not None and (seg <= 0 or seg % mcfg.pool_every):
        raise ValueError(
            f"segment_len must be a positive multiple of pool_every={mcfg.pool_every}, got {seg}"
        )
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if resume and not out_dir:
        raise ValueError("resume needs cfg.out_dir")
    data = {2: build_dataset(train_examples, tok, cfg.max_len, mcfg.flags, progress, mcfg.n_hints > 0)}
    if cfg.phase1_frac > 0:
        easy = phase1_examples if phase1_examples is not None else [e for e in train_examples if is_easy(e)]
        if not easy:
            raise ValueError(
                "curriculum phase 1 needs easy documents (no obfuscation, no hard negative); none"
            )
        data[1] = build_dataset(easy, tok, cfg.phase1_max_len, mcfg.flags, progress, mcfg.n_hints > 0)
    val = build_dataset(val_examples, tok, cfg.max_len, mcfg.flags, progress, mcfg.n_hints > 0)
    model = DLPModel(mcfg)
    opt = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    struct = torch.tensor(structural_ids(tok), dtype=torch.long)
    newline_id = tok.piece_to_id("\n")
    state = {
        "step": 0, "tokens": 0, "train_seconds": 0.0,
        "streams": {str(p): {"order": [], "pos": 0, "epoch": 0} for p in data}, "history": [],
    }  # fmt: skip
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        from chinwag.train.checkpoint import load_checkpoint, set_rng_state

        state = load_checkpoint(ckpt, model, opt)
        gen.set_state(_unb64(state.pop("gen_state")))
        set_rng_state(state.pop("rng"))
    elif out_dir:  # a new run: the folder must already be enough to resume or to scan
        out_dir.mkdir(parents=True, exist_ok=True)
        tok.save(out_dir / TOKENIZER)
        write_json(out_dir / TRAIN_CONFIG, asdict(cfg))
    history = state["history"]
    multiple = mcfg.pool_every  # padding only to the next slow-tier chunk (outputs are padding-invariant)
    weights = loss_weights(cfg)
    last_loss, grad_norm, last_eval = float("nan"), float("nan"), {}

    def run_eval(step: int, parts: dict) -> None:
        rec = {"step": step, "phase": phase, "lr": lr, "loss": last_loss, "grad_norm": grad_norm}
        rec.update({f"loss_{k}": v for k, v in parts.items()})
        rec["tokens"] = state["tokens"]
        rec["train_seconds"] = state["train_seconds"]
        rec["tokens_per_s"] = state["tokens"] / max(state["train_seconds"], 1e-9)
        last_eval.clear()
        last_eval.update(evaluate(model, val, cfg))
        rec.update({f"val_{k}": v for k, v in last_eval.items() if k != "per_label"})
        history.append(rec)
        if out_dir:  # rewrite the whole log atomically: a crash never leaves a torn line
            atomic_write_text(out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))

    phase = 1 if 1 in data else 2
    lr = lr_at(state["step"], cfg, None if cfg.steps else _progress(cfg, state))

    def finished() -> bool:
        return bool(cfg.steps and state["step"] >= cfg.steps) or bool(
            cfg.max_seconds and state["train_seconds"] >= cfg.max_seconds
        )

    while not finished():
        step, progress = state["step"], _progress(cfg, state)
        phase = 1 if 1 in data and progress < cfg.phase1_frac else 2
        ds, stream = data[phase], state["streams"][str(phase)]
        t0 = time.perf_counter()
        model.train()
        lr = lr_at(step, cfg, None if cfg.steps else progress)
        for g in opt.param_groups:
            g["lr"] = lr
        rows, real = [], 0
        while (real < cfg.tokens_per_step) if cfg.tokens_per_step else (len(rows) < cfg.batch_size):
            rows.append(_plan_row(ds, _take(stream, len(ds), gen), cfg, gen, struct, newline_id))
            real += len(rows[-1].ids)
        batches = [_collate(ds, mb, multiple) for mb in _micro_batches(rows, cfg, multiple)]
        totals = Counter()
        for b in batches:
            totals.update(loss_counts(b))
        parts = Counter()
        opt.zero_grad(set_to_none=True)
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                out = model(b["ids"], b["mask"], segment_len=seg, mask_positions=b["masked"])
            sums = {
                k: v for k, v in loss_sums(model, out, b, cfg).items() if totals[k]
            }  # a step may lack a kind
            loss = sum(weights[k] * v / totals[k] for k, v in sums.items())
            loss.backward()
            for k, v in sums.items():
                parts[k] += v.item() / totals[k]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf))
        opt.step()
        dt = time.perf_counter() - t0
        state["train_seconds"] += dt
        state["tokens"] += real
        state["step"] = step = step + 1
        last_loss = sum(weights[k] * v for k, v in parts.items())
        done = finished()
        if step % cfg.eval_every == 0 or done:
            run_eval(step, dict(parts))
        if callback:
            callback({"step": step, "steps": cfg.steps, "progress": min(1.0, _progress(cfg, state)),
                      "phase": phase, "loss": last_loss, "lr": lr,
                      "tokens_per_s": state["tokens"] / max(state["train_seconds"], 1e-9),
                      "val_span_f1": history[-1]["val_span_f1"] if history else None})  # fmt: skip
        if stop_after is not None and step >= stop_after and not done:
            return {"model": model, "config": mcfg, "history": history, "steps": step, "stopped": True}
        if out_dir and cfg.ckpt_every and (step % cfg.ckpt_every == 0 or done):
            from chinwag.train.checkpoint import rng_state, rotate_checkpoints

            save_checkpoint(
                out_dir, model, opt, {**state, "gen_state": _b64(gen.get_state()), "rng": rng_state()}
            )
            rotate_checkpoints(out_dir, cfg.keep_checkpoints)
    if not history or history[-1]["step"] != state["step"]:
        run_eval(state["step"], {})
    final = dict(last_eval) or evaluate(model, val, cfg)  # empty when resuming a run that had finished
    result = {"model": model, "config": mcfg, "history": history, "final": final, "steps": state["step"],
              "tokens_per_s": state["tokens"] / max(state["train_seconds"], 1e-9),
              "train_seconds": state["train_seconds"], "stopped": False}  # fmt: skip
    if out_dir:
        save_dlp(model, out_dir)
        write_json(out_dir / TRAIN_CONFIG, asdict(cfg))
    return result


# --- evaluation ---


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"p": p, "r": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": tp + fn}


@torch.no_grad()
def predict_logits(model: DLPModel, ds: DLPDataset, segment_len: int | None, batch_size: int = 16,
                   bf16: bool = False):  # fmt: skip
    """Yield (dataset indices, model output, mask) over `ds` in batches of similar length (little padding;
    outputs do not depend on the padding)."""
    model.eval()
    order = sorted(range(len(ds)), key=lambda i: -int(ds.mask[i].sum()))  # longest first: peak memory early
    multiple = model.config.pool_every
    for a in range(0, len(order), batch_size):
        idx = torch.tensor(order[a : a + batch_size])
        ids, mask, _, _, _ = _batch(ds, idx, multiple)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(ids, mask, segment_len=segment_len)
        yield idx, out, mask


@torch.no_grad()
def evaluate(model: DLPModel, ds: DLPDataset, cfg: DLPTrainConfig) -> dict:
    """BIO accuracy on gold non-O tokens, exact span P/R/F1 (micro and per label), per-head and per-flag
    accuracy at 0.5, and the BIO / doc losses (smooth signals while span F1 is still noisy)."""
    tp, fp, fn = Counter(), Counter(), Counter()
    tag_ok = tag_n = 0
    bio_loss = doc_loss = 0.0
    head_ok = torch.zeros(len(DOC_HEADS))
    flag_ok = torch.zeros(model.config.n_flags)
    for idx, out, mask in predict_logits(model, ds, cfg.segment_len, cfg.eval_batch_size, cfg.bf16):
        bio, doc, flags = ds.bio[idx, : mask.shape[1]], ds.doc[idx], ds.flags[idx]
        pred = out.bio_logits.float().argmax(-1)
        ent = bio > 0  # gold non-O (padding is -100)
        tag_ok += int((pred[ent] == bio[ent]).sum())
        tag_n += int(ent.sum())
        logits = out.bio_logits.float()
        bio_loss += float(F.cross_entropy(logits.flatten(0, 1), bio.flatten(), reduction="sum"))  # pad: -100
        doc_loss += float(F.binary_cross_entropy_with_logits(out.doc_logits.float(), doc, reduction="sum"))
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
    return {
        "bio_entity_token_acc": tag_ok / max(tag_n, 1),
        "span_p": micro["p"],
        "span_r": micro["r"],
        "span_f1": micro["f1"],
        "bio_loss": bio_loss / max(int(ds.mask.sum()), 1),
        "doc_loss": doc_loss / (n * len(DOC_HEADS)),
        **{f"acc_{h}": float(head_ok[k]) / n for k, h in enumerate(DOC_HEADS)},
        **{f"acc_{f}": float(flag_ok[k]) / n for k, f in enumerate(model.config.flags)},
        "per_label": {lab: _prf(tp[lab], fp[lab], fn[lab]) for lab in LABELS},
    }


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


def load_train_config(folder: str | Path) -> DLPTrainConfig:
    path = Path(folder) / TRAIN_CONFIG
    return DLPTrainConfig.from_dict(read_json(path), where=str(path))
