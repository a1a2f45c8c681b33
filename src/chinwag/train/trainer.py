"""The training loop: one loop for pretraining and SFT, single device or `torchrun` DDP.

Read top to bottom: `Trainer.__init__` sets up (distributed, device, data, model, optimizer, resume), then
`fit()` runs `train_step()` until a limit is hit, evaluating, logging and checkpointing on the way.

Determinism is the design rule: the rows of step s are a pure function of (seed, data position), the LR a
pure function of the step, and a checkpoint holds everything else (weights, AdamW moments, RNG states), so a
resumed run reproduces the uninterrupted loss curve exactly (bit-for-bit in fp32 on CPU).
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chinwag.train import checkpoint as ckpt
from chinwag.train.config import TrainConfig
from chinwag.utils import atomic_path, atomic_write_text, read_json, seed_everything, write_json

IGNORE = -100


# ---- pure helpers (unit-tested on their own) ---------------------------------------------------------------
def lr_at(step: int, peak: float, warmup: int, total: int | None, min_ratio: float) -> float:
    """LR for optimizer update number `step` (0-based): linear warmup, then cosine decay to peak*min_ratio.

    With no known horizon (a time-budget-only run before its horizon is estimated) the LR stays at peak.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class RowOrder:
    """The run's row order: an endless stream where epoch e visits all rows in a permutation seeded by
    (seed, e). Position p of the stream is row `perm(p // n)[p % n]`, so any position can be recomputed."""

    def __init__(self, n_rows: int, seed: int):
        self.n, self.seed = n_rows, seed
        self._epoch, self._perm = -1, None

    def perm(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def rows(self, start: int, count: int) -> np.ndarray:
        return np.array(
            [self.perm(p // self.n)[p % self.n] for p in range(start, start + count)], dtype=np.int64
        )


def eval_metrics(nats: float, n_tokens: float, n_bytes: float, n_correct: float) -> dict[str, float]:
    """Loss (nats/token), perplexity, bits per byte (tokenizer-independent) and top-1 token accuracy."""
    loss = nats / max(n_tokens, 1)
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50.0)),
        "val_bpb": nats / (math.log(2) * max(n_bytes, 1)),
        "val_acc": n_correct / max(n_tokens, 1),
    }


@torch.no_grad()
def evaluate_sums(
    model, ds, rows: np.ndarray, batch_size: int, byte_lengths: torch.Tensor, device, amp
) -> torch.Tensor:
    """[sum of nats, target tokens, target bytes, correct top-1] over `rows` of `ds` (float64 tensor)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for i in range(0, len(rows), batch_size):
        b = ds.get_rows(rows[i : i + batch_size])
        mask = causal_only(b["attention_mask"])
        ids, tgt = b["input_ids"].to(device), b["targets"].to(device)
        with amp:
            logits, _ = model(ids, attention_mask=None if mask is None else mask.to(device))
        logits = logits.float().view(-1, logits.size(-1))
        tgt = tgt.view(-1)
        valid = tgt != IGNORE
        nats = F.cross_entropy(logits, tgt, ignore_index=IGNORE, reduction="sum")
        correct = ((logits.argmax(-1) == tgt) & valid).sum()
        n_bytes = byte_lengths[tgt[valid]].sum()
        sums += torch.stack([nats.double(), valid.sum().double(), n_bytes.double(), correct.double()])
    model.train(was_training)
    return sums


def causal_only(mask: torch.Tensor) -> torch.Tensor | None:
    """None when every row is real tokens followed only by right padding (checked on CPU, before the copy).

    Then plain causal attention gives the same outputs at every real position (padding comes after them,
    and padded positions carry no loss), and the model takes its fast `is_causal` path, which also keeps
    `torch.compile` free of a data-dependent branch.
    """
    m = mask.to(torch.uint8)
    return None if bool((m.cummin(dim=1).values == m).all()) else mask


def is_prepared(folder: str | Path) -> bool:
    return (Path(folder) / "meta.json").is_file()


# ---- the trainer -------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self._setup_distributed()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)

        resume_from = None
        if cfg.resume:
            resume_from = ckpt.latest_valid_checkpoint(self.run_dir)
        elif ckpt.list_checkpoints(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already has checkpoints: pass --resume, or choose another --out"
            )

        self.data_dir, self.val_dir = self._setup_data()
        from chinwag.data.dataset import load_split
        from chinwag.tokenizer.core import Tokenizer

        self.tok = Tokenizer.load(self.data_dir / "tokenizer.json")
        self.model = self._build_model(resume_from)
        mcfg = self.model.config
        self.seq_len = cfg.seq_len or mcfg.max_seq_len
        if self.seq_len > mcfg.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} exceeds the model's max_seq_len {mcfg.max_seq_len}")
        if self.tok.vocab_size > mcfg.vocab_size:
            raise ValueError(f"tokenizer has {self.tok.vocab_size} ids but the model only {mcfg.vocab_size}")
        self.model.to(self.device)

        self.train_ds = load_split(self.data_dir, "train", self.seq_len)
        if len(self.train_ds) == 0:
            raise ValueError(
                f"{self.data_dir}: no training rows (too little data for seq_len={self.seq_len}?)"
            )
        self.val_ds = self._load_val(load_split)
        self.byte_lengths = torch.as_tensor(
            self.tok.token_byte_lengths(), dtype=torch.long, device=self.device
        )

        # Batch geometry: every rank takes `batch_size` rows of each global micro-batch.
        self.accum = cfg.grad_accum(self.seq_len, self.world)
        self.rows_per_step = cfg.batch_size * self.world * self.accum
        self.tokens_per_step = self.rows_per_step * self.seq_len
        self.order = RowOrder(len(self.train_ds), cfg.seed)
        self.stop_step, self.stop_reason = self._step_limit()

        self.optimizer = self._build_optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.dtype == "fp16")
        self.state = {
            "step": 0,
            "rows_seen": 0,  # the data position: rows consumed by all ranks so far
            "tokens_seen": 0,
            "best_val_loss": None,
            "best_step": None,
            "best_metrics": None,
            "bad_evals": 0,
            "last_eval_step": None,
            "total_steps": self.stop_step,  # the LR schedule's horizon
            "elapsed_s": 0.0,
        }
        if resume_from is not None:
            self._resume(resume_from)
        self.fwd = torch.compile(self.model) if cfg.compile else self.model
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd = DDP(self.fwd, device_ids=ids)
        if self.is_main:
            self._write_run_files(resume_from)

    # ---- setup ---------------------------------------------------------------------------------------------
    def _setup_distributed(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.ddp = self.world > 1
        self.is_main = self.rank == 0
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if self.ddp:
            import torch.distributed as dist

            local = int(os.environ.get("LOCAL_RANK", "0"))
            if want.startswith("cuda"):
                want = f"cuda:{local}"
                torch.cuda.set_device(want)
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if want.startswith("cuda") else "gloo")
                self._owns_group = True
        self.device = torch.device(want)
        dtype = self.cfg.dtype
        if dtype == "fp16" and self.device.type != "cuda":
            raise ValueError("train config: dtype: fp16 needs CUDA; use bf16 or fp32 on CPU")
        if dtype == "fp32":
            self.amp = nullcontext()
        else:
            self.amp = torch.autocast(
                self.device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16
            )

    def _setup_data(self) -> tuple[Path, Path | None]:
        """Return (train folder, separate val folder or None); prepare raw data into the run if needed."""
        cfg = self.cfg
        data = Path(cfg.data) if cfg.data else self.run_dir / "data"
        if not data.exists() and is_prepared(self.run_dir / "data"):
            data = self.run_dir / "data"  # raw source gone, but we tokenized it into the run already
        if not data.exists():
            raise FileNotFoundError(f"data: {data} does not exist")
        val = Path(cfg.val_data) if cfg.val_data else None
        if val is not None and not val.exists():
            raise FileNotFoundError(f"val_data: {val} does not exist")
        if is_prepared(data):
            meta = read_json(data / "meta.json")
            if meta.get("mode") != cfg.mode:
                raise ValueError(
                    f"{data}/meta.json: data prepared for mode {meta.get('mode')!r}, training {cfg.mode!r}"
                )
            if val is not None and not is_prepared(val):
                raise ValueError(f"val_data: {val} is raw; with prepared --data give a prepared folder too")
            return data, val
        # Raw text / JSONL: tokenize into the run folder once (reused on resume).
        prepared = self.run_dir / "data"
        if self.is_main and not is_prepared(prepared):
            if not cfg.tokenizer:
                raise ValueError(
                    f"data: {data} is not a prepared folder, so --tokenizer is needed to prepare it"
                )
            from chinwag.data import prepare

            self.log(f"preparing {data} -> {prepared} (mode {cfg.mode}, tokenizer {cfg.tokenizer})")
            prepare(
                str(data),
                str(prepared),
                tokenizer=cfg.tokenizer,
                mode=cfg.mode,
                val_fraction=cfg.val_fraction,
                seed=cfg.seed,
                val_source=str(val) if val is not None else None,
            )
        self._barrier()
        return prepared, None

    def _load_val(self, load_split):
        folder = self.val_dir or self.data_dir
        meta = read_json(folder / "meta.json")
        split = "val" if meta.get("splits", {}).get("val", {}).get("examples", 0) else None
        if split is None and self.val_dir is not None:
            split = "train"  # a separate validation folder may hold everything in its train split
        if split is None or self.cfg.eval_batches == 0:
            if self.cfg.early_stopping_patience:
                self.log("warning: no validation data, so no evaluation and no early stopping")
            return None
        ds = load_split(folder, split, self.seq_len)
        return ds if len(ds) else None

    def _build_model(self, resume_from: Path | None):
        from chinwag.model.config import ModelConfig
        from chinwag.model.model import ChinwagLM
        from chinwag.model.presets import get_config

        cfg = self.cfg
        if resume_from is not None:  # the architecture comes from the checkpoint; weights are loaded later
            return ChinwagLM(ModelConfig.load(resume_from / "config.json"))
        if cfg.init_from:
            from chinwag.model.io import load_model
            from chinwag.tokenizer.core import Tokenizer

            model = load_model(cfg.init_from)
            init_tok = Path(cfg.init_from) / "tokenizer.json"
            if init_tok.is_file() and Tokenizer.load(init_tok) != self.tok:
                raise ValueError(
                    f"init_from: {init_tok} differs from the tokenizer of the data in {self.data_dir}"
                )
            if cfg.model_overrides:  # e.g. more dropout for SFT: rebuild with the new config, same weights
                new = ChinwagLM(model.config.replace(**cfg.model_overrides))
                new.load_state_dict(model.state_dict())
                model = new
            return model
        overrides = dict(cfg.model_overrides)
        overrides.setdefault("vocab_size", self.tok.vocab_size)
        if cfg.seq_len and "max_seq_len" not in overrides:
            overrides["max_seq_len"] = max(cfg.seq_len, get_config(cfg.preset).max_seq_len)
        return ChinwagLM(get_config(cfg.preset, **overrides))

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups = self.model.param_groups(cfg.weight_decay)
        kw = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8, **kw)

    def _step_limit(self) -> tuple[int | None, str | None]:
        """The step at which the run ends (also the LR horizon), from max_steps / max_tokens / epochs."""
        cfg = self.cfg
        limits = []
        if cfg.max_steps:
            limits.append((cfg.max_steps, "max_steps"))
        if cfg.max_tokens:
            limits.append((math.ceil(cfg.max_tokens / self.tokens_per_step), "max_tokens"))
        if cfg.epochs:
            limits.append((math.ceil(cfg.epochs * len(self.train_ds) / self.rows_per_step), "epochs"))
        return min(limits) if limits else (None, None)

    def _resume(self, folder: Path) -> None:
        saved = ckpt.load_checkpoint(folder, self.model, self.optimizer)
        if saved.get("rows_per_step") != self.rows_per_step or saved.get("seq_len") != self.seq_len:
            self.log(
                f"warning: batch geometry changed since {folder.name} (rows/step "
                f"{saved.get('rows_per_step')} -> {self.rows_per_step}, seq_len {saved.get('seq_len')} -> "
                f"{self.seq_len}); the data order continues from the saved position but will not match "
                "an uninterrupted run"
            )
        for key in self.state:
            if key in saved:
                self.state[key] = saved[key]
        if self.stop_step is not None:  # new limits given on resume win over the saved horizon
            self.state["total_steps"] = self.stop_step
        ckpt.set_rng_state(saved["rng"])
        if self.rank:  # ranks must not share dropout noise
            torch.manual_seed(self.cfg.seed + 1000 * self.rank + self.state["step"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.log(f"resumed from {folder} (step {self.state['step']}, {self.state['tokens_seen']:,} tokens)")

    def _write_run_files(self, resume_from: Path | None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.run_dir / "train_config.json")
        self.model.config.save(self.run_dir / "config.json")
        with atomic_path(self.run_dir / "tokenizer.json") as tmp:
            shutil.copyfile(self.data_dir / "tokenizer.json", tmp)
        # The metrics file must describe exactly the run we continue: drop lines past the resumed step
        # (logged after the checkpoint, before a crash); a fresh run starts a fresh file.
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            if resume_from is None:
                metrics.unlink()
            else:
                import json

                def kept(line: str) -> bool:  # a torn last line (crash mid-append) is dropped too
                    try:
                        return json.loads(line).get("step", 0) <= self.state["step"]
                    except ValueError:
                        return False

                keep = [ln for ln in metrics.read_text().splitlines() if ln.strip() and kept(ln)]
                atomic_write_text(metrics, "".join(ln + "\n" for ln in keep))
        self.metrics_path = metrics

    # ---- distributed helpers -------------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.ddp:
            torch.distributed.barrier()

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.ddp:
            torch.distributed.all_reduce(t)
        return t

    def log(self, msg: str) -> None:
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(msg)

    # ---- one optimizer step --------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, float]:
        """Accumulate gradients over `accum` micro-batches, clip, step. Returns (loss, grad_norm, lr)."""
        cfg, step = self.cfg, self.state["step"]
        B, start = cfg.batch_size, self.state["rows_seen"]
        # this rank's slice of each global micro-batch, fetched up front so we can count target tokens
        batches = [
            self.train_ds.get_rows(self.order.rows(start + (m * self.world + self.rank) * B, B))
            for m in range(self.accum)
        ]
        # Normalise by the target count of the whole step (all ranks, all micro-batches): the gradient is
        # then that of one big batch, however it is split (SFT rows hold different numbers of targets).
        n_tgt = torch.tensor(
            float(sum(int((b["targets"] != IGNORE).sum()) for b in batches)), device=self.device
        )
        n_tgt = self._all_sum(n_tgt).clamp(min=1)
        loss_sum = torch.zeros((), device=self.device)
        for m, b in enumerate(batches):
            mask = causal_only(b["attention_mask"])
            mask = None if mask is None else mask.to(self.device, non_blocking=True)
            ids, tgt = (b[k].to(self.device, non_blocking=True) for k in ("input_ids", "targets"))
            last = m == self.accum - 1
            sync = nullcontext() if (last or not self.ddp) else self.fwd.no_sync()  # all-reduce once per step
            with sync:
                with self.amp:
                    logits, _ = self.fwd(ids, attention_mask=mask)
                loss = F.cross_entropy(
                    logits.float().view(-1, logits.size(-1)),
                    tgt.view(-1),
                    ignore_index=IGNORE,
                    reduction="sum",
                )
                # DDP averages gradients over ranks; multiply by world so the result is sum / n_tgt
                self.scaler.scale(loss * (self.world / n_tgt)).backward()
            loss_sum += loss.detach()
        loss = (self._all_sum(loss_sum) / n_tgt).item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {step + 1}; try a lower --lr or --dtype fp32/bf16"
            )

        self.scaler.unscale_(self.optimizer)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, self.state["total_steps"], cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

        self.state["step"] = step + 1
        self.state["rows_seen"] = start + self.rows_per_step
        self.state["tokens_seen"] += self.tokens_per_step
        return loss, grad_norm, lr

    # ---- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float] | None:
        if self.val_ds is None:
            return None
        n = min(len(self.val_ds), self.cfg.eval_batches * self.cfg.batch_size * self.world)
        rows = np.array_split(np.arange(n), self.world)[self.rank]  # each rank scores its share
        sums = evaluate_sums(
            self.model, self.val_ds, rows, self.cfg.batch_size, self.byte_lengths, self.device, self.amp
        )
        return eval_metrics(*self._all_sum(sums).tolist())

    def _after_eval(self, metrics: dict[str, float]) -> bool:
        """Record an eval; save best/. Returns True when early stopping says stop."""
        st = self.state
        st["last_eval_step"] = st["step"]
        self.write_metrics({"step": st["step"], "tokens": st["tokens_seen"], **metrics})
        improved = st["best_val_loss"] is None or metrics["val_loss"] < st["best_val_loss"]
        if improved:
            st.update(
                best_val_loss=metrics["val_loss"], best_step=st["step"], best_metrics=metrics, bad_evals=0
            )
            self.save("best")
        else:
            st["bad_evals"] += 1
        self.log(
            f"step {st['step']}: val loss {metrics['val_loss']:.4f} ppl {metrics['val_ppl']:.2f} "
            f"bpb {metrics['val_bpb']:.4f} acc {metrics['val_acc']:.3f}" + (" (best)" if improved else "")
        )
        patience = self.cfg.early_stopping_patience
        return bool(patience and st["bad_evals"] >= patience)

    # ---- files ---------------------------------------------------------------------------------------------
    def write_metrics(self, record: dict) -> None:
        if not self.is_main:
            return
        import json

        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "tokens"):
                    self.tb.add_scalar(("val/" if k.startswith("val_") else "train/") + k, v, record["step"])

    def save(self, name: str | None = None) -> Path | None:
        """Write checkpoints/step_XXXXXXX (or NAME); rotate; publish weights to the root."""
        if not self.is_main:
            return None
        state = dict(
            self.state,
            rows_per_step=self.rows_per_step,
            seq_len=self.seq_len,
            world_size=self.world,
            seed=self.cfg.seed,
            rng=ckpt.rng_state(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
        )
        folder = self.run_dir / "checkpoints" / (name or ckpt.step_name(self.state["step"]))
        ckpt.save_checkpoint(folder, self.model, self.optimizer, state)
        if name is None:
            ckpt.rotate_checkpoints(self.run_dir, self.cfg.keep_last)
            ckpt.publish_weights(folder, self.run_dir)
            self._last_saved = self.state["step"]
        return folder

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, st = self.cfg, self.state
        self.tb = None
        if cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self.log("warning: tensorboard is not installed (pip install tensorboard); skipping it")
        from tqdm import tqdm

        self._last_saved = None
        t_start = time.time()
        elapsed_before = st["elapsed_s"]
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        self.log(
            f"training {self.model.num_params():,} params on {self.device} ({cfg.dtype}): "
            f"{len(self.train_ds):,} rows of {self.seq_len} tokens, batch {cfg.batch_size} x accum "
            f"{self.accum} x world {self.world} = {self.tokens_per_step:,} tokens/step"
        )
        if getattr(self.train_ds, "n_dropped", 0):
            self.log(
                f"note: {self.train_ds.n_dropped} examples dropped (no supervised token in the first "
                f"{self.seq_len} tokens)"
            )
        bar = tqdm(
            total=self.stop_step or st["total_steps"],  # a time budget's horizon is known after 5 steps
            initial=st["step"],
            unit="step",
            dynamic_ncols=True,
            disable=not (cfg.progress and self.is_main),
        )
        reason = None
        last_log_t, last_log_tokens, session_steps, loss = time.time(), st["tokens_seen"], 0, float("nan")
        try:
            while reason is None:
                if self.stop_step is not None and st["step"] >= self.stop_step:
                    reason = self.stop_reason
                    break
                if cfg.stop_at_step is not None and st["step"] >= cfg.stop_at_step:
                    reason = "stop_at_step"
                    break
                loss, grad_norm, lr = self.train_step()
                session_steps += 1
                bar.update(1)
                step = st["step"]
                now = time.time()
                if budget and st["total_steps"] is None and session_steps == 5:
                    # time budget only: estimate the LR horizon from the pace so far (saved, so resume agrees)
                    pace = (now - t_start) / session_steps
                    st["total_steps"] = step + max(1, int((budget - (now - t_start)) / pace))
                    bar.total = bar.total or st["total_steps"]  # gives the bar its ETA
                if step % cfg.log_every == 0 or step == self.stop_step:
                    tps = (st["tokens_seen"] - last_log_tokens) / max(now - last_log_t, 1e-9)
                    last_log_t, last_log_tokens = now, st["tokens_seen"]
                    self.write_metrics(
                        {
                            "step": step,
                            "tokens": st["tokens_seen"],
                            "loss": loss,
                            "lr": lr,
                            "grad_norm": grad_norm,
                            "tokens_per_s": tps,
                            "elapsed_s": elapsed_before + now - t_start,
                        }
                    )
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
                if cfg.eval_every and step % cfg.eval_every == 0 and self.val_ds is not None:
                    if self._after_eval(self.evaluate()):
                        reason = "early_stopping"
                if step % cfg.save_every == 0:
                    self.save()
                if budget is not None and reason is None:
                    over = torch.tensor(float(time.time() - t_start >= budget), device=self.device)
                    if self._all_sum(over).item() > 0:  # every rank stops at the same step
                        reason = "max_minutes"
        except KeyboardInterrupt:
            reason = "interrupted"
            self.log("interrupted: saving a checkpoint before exiting")
        finally:
            bar.close()

        st["elapsed_s"] = elapsed_before + time.time() - t_start
        st["stopped_reason"] = reason
        # a pause (stop_at_step, Ctrl-C) is not the end of the run: no final eval, just a checkpoint
        paused = reason in ("stop_at_step", "interrupted")
        if self.val_ds is not None and st["last_eval_step"] != st["step"] and not paused:
            self._after_eval(self.evaluate())
        if self._last_saved != st["step"] and st["step"] > 0:
            self.save()
        summary = self._summary(loss)
        if self.is_main:
            write_json(self.run_dir / "summary.json", summary)
            self.log(f"stopped at step {st['step']} ({reason}); run saved in {self.run_dir}")
            if self.tb is not None:
                self.tb.close()
        if getattr(self, "_owns_group", False):
            torch.distributed.destroy_process_group()
        return summary

    def _summary(self, last_loss: float) -> dict:
        st = self.state
        best = st["best_metrics"] or {}
        return {
            "run_dir": str(self.run_dir),
            "final_step": st["step"],
            "tokens_seen": st["tokens_seen"],
            "stopped_reason": st["stopped_reason"],
            "train_loss": last_loss,
            "best_step": st["best_step"],
            "best_val_loss": best.get("val_loss"),
            "best_val_ppl": best.get("val_ppl"),
            "best_val_bpb": best.get("val_bpb"),
            "best_val_acc": best.get("val_acc"),
            "elapsed_s": st["elapsed_s"],
            "n_params": self.model.num_params(),
            "train_rows": len(self.train_ds),
            "train_dropped": int(getattr(self.train_ds, "n_dropped", 0)),
        }


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a run; returns a summary: final step, best val loss/ppl/bpb, run dir, stop reason."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return Trainer(cfg).fit()
