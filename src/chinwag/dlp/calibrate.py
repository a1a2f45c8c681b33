"""Temperature scaling of the DLP document heads (issue 8): one scalar T per head, fitted on the val split.

Why temperature scaling: it changes how sure the heads are, never how they rank documents (AUPRC and
FPR@95%R are untouched), it needs one number per head, and the scan applies it as `sigmoid(logit / T)`.
T minimises the val NLL (binary cross-entropy) of the final document logits; the fit is
`metrics.fit_temperature` (Newton's method on 1/T, where the NLL is convex: a 1-D problem that LBFGS would
solve no better), and ECE (15 equal-width bins) is `metrics.ece`.

`calib.json` = {"temperature": {head: T}, "ece_before": {head: e}, "ece_after": {head: e}, "nll_before":
{...}, "nll_after": {...}, "positives": {head: count}, "n": documents, "max_len", "segment_len", "bf16",
"notes": {head: why T = 1}}. A head whose val labels are all one class, or whose logits carry no signal,
keeps T = 1 (noted) rather than a degenerate T.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from chinwag.dlp.metrics import apply_temperature, bce, ece, fit_temperature, sigmoid
from chinwag.dlp.model import DOC_HEADS, DLPModel
from chinwag.utils import read_json, write_json

CALIB = "calib.json"


def doc_logits(model: DLPModel, ds, segment_len: int | None, batch_size: int = 16, bf16: bool = False):
    """Final document logits [N, n_heads] (float64) of every document of a `train.DLPDataset`, in order."""
    from chinwag.dlp.train import predict_logits

    out = np.zeros((len(ds), model.config.n_doc_heads))
    for idx, o, _ in predict_logits(model, ds, segment_len, batch_size, bf16):
        out[idx.numpy()] = o.doc_logits.float().numpy()
    return out


def fit_calibration(logits: np.ndarray, targets: np.ndarray, heads=DOC_HEADS) -> dict:
    """Per-head temperature, with ECE and NLL before and after. logits, targets: [N, n_heads]."""
    logits, targets = np.asarray(logits, dtype=float), np.asarray(targets, dtype=float)
    res: dict = {
        k: {} for k in ("temperature", "ece_before", "ece_after", "nll_before", "nll_after", "positives")
    }
    notes = {}
    for k, head in enumerate(heads):
        z, y = logits[:, k], targets[:, k]
        T = 1.0
        if y.min() == y.max():
            notes[head] = f"all {len(y)} val labels are {int(y[0])}: T kept at 1"
        else:
            try:
                T = fit_temperature(z, y)
            except ValueError as e:
                notes[head] = f"{e}: T kept at 1"
        res["temperature"][head] = float(T)
        res["ece_before"][head] = ece(y, sigmoid(z))
        res["ece_after"][head] = ece(y, apply_temperature(z, T))
        res["nll_before"][head] = bce(z, y)
        res["nll_after"][head] = bce(z / T, y)
        res["positives"][head] = int(y.sum())
    res["n"] = int(len(logits))
    res["notes"] = notes
    return res


def calibrate_model(
    model: DLPModel, ds, segment_len: int | None, batch_size: int = 16, bf16: bool = False
) -> dict:
    """Fit on a built val dataset (targets from the policy, `ds.doc`)."""
    z = doc_logits(model, ds, segment_len, batch_size, bf16)
    res = fit_calibration(z, ds.doc.numpy())
    res.update({"segment_len": segment_len, "bf16": bf16})
    return res


def calibrate_run(run_dir: str | Path, val_examples, batch_size: int = 16, progress=None) -> dict:
    """Load a run folder (weights, tokenizer, train_config), fit on `val_examples` at the run's window and
    segment length (fp32: the temperatures must not absorb bf16 rounding), write `calib.json`, return it."""
    from chinwag.dlp.tokenizer import DLPTokenizer
    from chinwag.dlp.train import TOKENIZER, build_dataset, load_dlp, load_train_config

    run_dir = Path(run_dir)
    model = load_dlp(run_dir)
    tok = DLPTokenizer.load(run_dir / TOKENIZER)
    tcfg = load_train_config(run_dir)
    hints = model.config.n_hints > 0
    ds = build_dataset(val_examples, tok, tcfg.max_len, model.config.flags, progress, hints)
    with torch.no_grad():
        res = calibrate_model(model, ds, tcfg.segment_len, batch_size, bf16=False)
    res["max_len"] = tcfg.max_len
    write_json(run_dir / CALIB, res)
    return res


def load_temperatures(run_dir: str | Path) -> dict[str, float]:
    """{head: T} from a run's calib.json; T = 1 for every head when there is no file."""
    path = Path(run_dir) / CALIB
    if not path.is_file():
        return {h: 1.0 for h in DOC_HEADS}
    temps = read_json(path).get("temperature", {})
    return {h: float(temps.get(h, 1.0)) for h in DOC_HEADS}
