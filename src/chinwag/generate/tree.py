"""Tree search decoding: Monte-Carlo tree search over chunks of continuation, guided by a scorer.

A node is a partial completion. One iteration:
  select   walk down from the root picking the child with the best UCT value
           (normalised mean value + exploration * sqrt(ln N_parent / N_child)) until a leaf;
  expand   decode `branching` continuations of `chunk_tokens` tokens from the leaf in one batch
           (mode "topk": the k most likely next tokens, each continued greedily, so child 0 extends the
           greedy path; mode "sample": k samples under the sampling params);
  evaluate score every new child's whole completion with the scorer (its value);
  prune    keep only the best `keep` children (duplicates dropped) as places to search further;
  back up  add each kept child's value to every ancestor's visit count and value sum.
The budget is the number of nodes evaluated. The answer is the best-scoring completion seen anywhere in
the tree; a node ending in a stop token or at max_new_tokens is terminal and never expanded.

Values are normalised by the min/max seen so far (as MuZero does), so any scorer scale works with the
same exploration constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from chinwag.generate.beam import budget_for, decode, device_of, prefill, repeat_cache, stop_ids_for
from chinwag.generate.sampling import SamplingParams, sample
from chinwag.generate.scorers import Scorer


@dataclass(eq=False)
class Node:
    ids: list[int]  # the completion so far (without any stop token)
    parent: Node | None = None
    depth: int = 0
    score: float = float("-inf")  # the scorer's value of this completion
    terminal: bool = False
    exhausted: bool = False  # terminal, or every child exhausted: nothing left to search below
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0


@dataclass
class TreeResult:
    ids: list[int]
    text: str
    score: float
    stats: dict = field(default_factory=dict)
    root: Node | None = None


def tree_search(
    model,
    tok,
    prompt_ids: list[int],
    scorer: Scorer,
    budget_nodes: int = 32,
    branching: int = 4,
    chunk_tokens: int = 4,
    params: SamplingParams | None = None,
    mode: str = "topk",
    keep: int | None = None,
    exploration: float = 1.0,
    generator: torch.Generator | None = None,
) -> TreeResult:
    """MCTS decoding. `params` gives max_new_tokens, stop ids and (mode "sample") the sampling knobs.
    `keep` children survive pruning per expansion (default: half of `branching`, at least 1)."""
    params = params or SamplingParams()
    params.validate()
    if mode not in ("topk", "sample"):
        raise ValueError(f"mode must be 'topk' or 'sample', got {mode!r}")
    if budget_nodes < 1 or branching < 1 or chunk_tokens < 1:
        raise ValueError("budget_nodes, branching and chunk_tokens must all be >= 1")
    keep = keep or max(1, (branching + 1) // 2)
    if generator is None and params.seed is not None:
        generator = torch.Generator(device=device_of(model)).manual_seed(params.seed)
    budget = budget_for(model, prompt_ids, params.max_new_tokens)
    stops = stop_ids_for(tok, params)
    root = Node([])
    stats = dict(nodes=0, expansions=0, scorer_calls=0, pruned=0, max_depth=0)
    seen: list[Node] = []
    lo, hi = math.inf, -math.inf

    while stats["nodes"] < budget_nodes and not root.exhausted:
        leaf = _select(root, lo, hi, exploration)
        n = min(branching, budget_nodes - stats["nodes"])
        n_tok = min(chunk_tokens, budget - len(leaf.ids))
        chunks = _expand(
            model, list(prompt_ids) + leaf.ids, leaf.ids, n, n_tok, params, mode, stops, generator
        )
        stats["expansions"] += 1
        kids, keys = [], set()
        for chunk, stopped in chunks:
            ids = leaf.ids + chunk
            kid = Node(ids, leaf, leaf.depth + 1, terminal=stopped or len(ids) >= budget)
            kid.score = float(scorer.score(list(prompt_ids), ids, decode(tok, ids)))
            stats["nodes"] += 1
            stats["scorer_calls"] += 1
            seen.append(kid)
            lo, hi = min(lo, kid.score), max(hi, kid.score)
            if (tuple(ids), kid.terminal) not in keys:  # identical continuations add nothing to search
                keys.add((tuple(ids), kid.terminal))
                kids.append(kid)
        kids.sort(key=lambda c: -c.score)
        stats["pruned"] += len(chunks) - min(keep, len(kids))
        leaf.children = kids[:keep]
        for kid in leaf.children:
            kid.exhausted = kid.terminal
            _backup(kid, kid.score)
            stats["max_depth"] = max(stats["max_depth"], kid.depth)
        _mark_exhausted(leaf)

    # best seen anywhere; ties go to the longer completion (more of the answer written)
    best = max(seen, key=lambda nd: (nd.score, len(nd.ids))) if seen else root
    stats["best_depth"] = best.depth
    return TreeResult(best.ids, decode(tok, best.ids), best.score, stats, root)


def _select(root: Node, lo: float, hi: float, c: float) -> Node:
    node = root
    while node.children:
        live = [ch for ch in node.children if not ch.exhausted]
        node = max(live, key=lambda ch: _uct(ch, node.visits, lo, hi, c))
    return node


def _uct(child: Node, parent_visits: int, lo: float, hi: float, c: float) -> float:
    mean = child.value_sum / child.visits
    q = (mean - lo) / (hi - lo) if hi > lo else 0.5
    return q + c * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)


def _backup(node: Node | None, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value_sum += value
        node = node.parent


def _mark_exhausted(node: Node | None) -> None:
    while node is not None and node.children and all(ch.exhausted for ch in node.children):
        node.exhausted = True
        node = node.parent


@torch.inference_mode()
def _expand(model, ctx: list[int], gen_ids: list[int], k, n_tokens, params, mode, stops, generator):
    """k continuations of up to n_tokens from ctx, decoded as one batch. Returns [(ids, stopped)]."""
    device = device_of(model)
    logits, cache = prefill(model, ctx, len(ctx) + n_tokens)
    cache = repeat_cache(cache, k)
    logits = logits.expand(k, -1)
    outs: list[list[int]] = [[] for _ in range(k)]
    stopped = [False] * k
    for step in range(n_tokens):
        if mode == "sample":
            nxt = sample(logits, params, [gen_ids + o for o in outs], generator=generator)
        elif step == 0:  # k distinct first tokens (the vocab may be smaller than k)
            top = logits[0].topk(min(k, logits.shape[-1])).indices
            nxt = top[torch.arange(k, device=device) % len(top)]
        else:
            nxt = logits.argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if not stopped[i]:
                if t in stops:
                    stopped[i] = True
                else:
                    outs[i].append(t)
        if all(stopped) or step == n_tokens - 1:
            break
        out, _ = model(nxt.view(k, 1).to(device), kv_cache=cache, start_pos=len(ctx) + step)
        logits = out[:, -1].float()
    return list(zip(outs, stopped, strict=True))
