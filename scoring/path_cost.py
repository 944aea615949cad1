"""Which scoring path a Reranker call takes when reuse_prefix / pack_tokens are left to it.

The four paths (whole prompts or shared prefixes, each packed or not) give the same scores
to float noise; they differ in compute and in the programs they compile. Once compiled,
the shared-prefix path with packed tokens is the fastest on CPU (bench/RESULTS.md), but a
fresh process pays a compile (seconds each on CPU) for every new program, and the
prefix/packed paths need more programs per call than whole prompts do (a prefill and an
extend per shape, and a packed length per real-token count). Over a fresh process's first
requests that made the fastest path the slowest (bench/RESULTS.md, issue 27).

So the choice weighs both, per call, as a ski rental:
  * every candidate path is planned (pure NumPy: the batches it would run, the programs
    they need, an estimate of their FLOPs);
  * the fastest candidate in compute is taken when its programs are already compiled, or
    when compiling them costs less this call than the alternative does;
  * otherwise the call "rents": the cheapest candidate whose programs are all compiled, or,
    when none is, whole prompts without packing (one program per (rows, length bucket),
    the one most later calls reuse). The compute it costs above the fastest candidate is
    added to `forgone`, and once `forgone` reaches the compile cost of the fastest
    candidate's missing programs, the call "buys": it compiles them and forgone restarts.
Over any sequence of calls this spends at most about twice what the best choice in
hindsight would (the ski-rental bound), and in steady state (every program compiled) it is
the fastest path.

Seconds come from the backend's measurements: `seconds_per_flop` and `compile_seconds` start
at priors for the platform and follow what each call measured (exponential averages).
Everything here is pure and deterministic given those two numbers, which tests can set.
With several processes (measured=False) they stay at the priors: stage-2 validation runs
the same calls on every process in lockstep over parameters that span them, and timings
differ between processes, so a measured choice could send them down different programs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from scoring.batching import Batch, PrefixChunk, packed_length

log = logging.getLogger(__name__)

# Priors before this process has measured anything: what a 2-core CPU does on the bundled
# tiny model and a 0.5B-shaped one (12-60 GFLOP/s, 1-3 s per compile). Accelerators compute
# far faster and compile slower, which only makes the compile weigh more.
PRIOR_FLOPS_PER_SECOND = {"cpu": 3e10, "gpu": 3e13, "tpu": 3e13}
PRIOR_COMPILE_SECONDS = {"cpu": 2.0, "gpu": 8.0, "tpu": 8.0}
# Weight of the newest measurement in the running averages.
SMOOTHING = 0.3


@dataclass(frozen=True)
class ScoringPath:
    """One way to score a call: shared prefixes or whole prompts, packed tokens or not."""

    reuse: bool
    pack: bool

    @property
    def name(self) -> str:
        return ("reuse" if self.reuse else "whole") + ("+pack" if self.pack else "")


WHOLE = ScoringPath(reuse=False, pack=False)


@dataclass(frozen=True)
class ModelCost:
    """FLOPs of the decoder per dense token and per (query, key) attention pair."""

    dense_per_token: float
    attention_per_pair: float

    @classmethod
    def of(cls, config) -> "ModelCost":
        h, q = config.hidden_size, config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * config.intermediate_size
        layers = config.num_hidden_layers
        return cls(dense_per_token=2.0 * per_layer * layers, attention_per_pair=4.0 * q * layers)


@dataclass(frozen=True)
class PathPlan:
    """What one path would run for a call: its batches (and chunks on the prefix path), the
    programs those batches need, and their FLOPs."""

    path: ScoringPath
    programs: tuple
    flops: float
    batches: list[Batch] = field(default_factory=list)
    chunks: list[PrefixChunk] = field(default_factory=list)
    rests: list = field(default_factory=list)
    split: np.ndarray | None = None


def dense_tokens(real: int, rows: int, length: int, pack: bool) -> int:
    """Token rows the dense layers run for a rows x length batch holding `real` real tokens."""
    return packed_length(real, rows, length) if pack else rows * length


def whole_plan(path: ScoringPath, lengths: Sequence[int], batches: list[Batch], cost: ModelCost) -> PathPlan:
    """Programs and FLOPs of the whole-prompt path over `batches` (filler rows repeat the
    first real row, as scoring.batching.batch_arrays fills them)."""
    programs, flops = [], 0.0
    for b in batches:
        n = [int(lengths[i]) for i in b.indices]
        tokens = dense_tokens(sum(n), b.rows, b.length, path.pack)
        programs.append(("whole", b.rows, b.length, tokens, path.pack))
        queries = sum(n) + (b.rows - len(n)) * n[0]
        flops += tokens * cost.dense_per_token + queries * b.length * cost.attention_per_pair
    return PathPlan(path, tuple(programs), flops, batches=batches)


def prefix_plan(path: ScoringPath, split: np.ndarray, rests: list, chunks: list[PrefixChunk], cost: ModelCost) -> PathPlan:
    """Programs and FLOPs of the shared-prefix path: one prefill per chunk, one extend per
    batch (filler rows keep one token, and packing runs real pairs only)."""
    programs, flops = [], 0.0
    for c in chunks:
        programs.append(("prefill", c.rows, c.length))
        prefix = [int(split[g]) for g in c.groups]
        flops += c.rows * c.length * cost.dense_per_token
        flops += (sum(prefix) + (c.rows - len(prefix)) * prefix[0]) * c.length * cost.attention_per_pair
        for b in c.batches:
            n = [len(rests[i]) for i in b.indices]
            tokens = dense_tokens(sum(n), b.rows, b.length, path.pack)
            programs.append(("extend", b.rows, c.length, b.length, tokens, path.pack))
            queries = sum(n) + (b.rows - len(n))
            flops += tokens * cost.dense_per_token + queries * (c.length + b.length) * cost.attention_per_pair
    return PathPlan(path, tuple(programs), flops, chunks=chunks, rests=rests, split=split)


@dataclass
class PathChooser:
    """The per-call choice (module docstring) and the measurements it rests on."""

    seconds_per_flop: float
    compile_seconds: float
    forgone: float = 0.0
    measured: bool = True  # fold timings in (observe); False keeps the priors (see above)
    settled: bool = False  # the last call took the fastest candidate (what steady state does)

    @classmethod
    def for_backend(cls, backend: str, measured: bool = True) -> "PathChooser":
        return cls(seconds_per_flop=1.0 / PRIOR_FLOPS_PER_SECOND.get(backend, PRIOR_FLOPS_PER_SECOND["cpu"]),
                   compile_seconds=PRIOR_COMPILE_SECONDS.get(backend, PRIOR_COMPILE_SECONDS["cpu"]),
                   measured=measured)

    def compute(self, plan: PathPlan) -> float:
        return plan.flops * self.seconds_per_flop

    def compile(self, plan: PathPlan, compiled: set) -> float:
        return len(set(plan.programs) - compiled) * self.compile_seconds

    def choose(self, plans: Sequence[PathPlan], compiled: set) -> PathPlan:
        """The plan this call runs (see the module docstring); updates `forgone`."""
        fastest = min(plans, key=self.compute)
        self.settled = True
        if len(plans) == 1 or self.compile(fastest, compiled) == 0:
            return fastest
        ready = [p for p in plans if self.compile(p, compiled) == 0]
        rent = min(ready, key=self.compute) if ready else next((p for p in plans if p.path == WHOLE), None)
        if rent is None:  # whole prompts unpacked are not a candidate: the cheapest this call
            rent = min(plans, key=lambda p: self.compute(p) + self.compile(p, compiled))
        extra_compile = self.compile(fastest, compiled) - self.compile(rent, compiled)
        saving = self.compute(rent) - self.compute(fastest)
        if saving + self.forgone >= extra_compile:
            self.forgone = 0.0
            return fastest
        self.forgone += max(saving, 0.0)
        self.settled = False
        return rent

    def observe(self, plan: PathPlan, seconds: float, compile_times: Sequence[float]) -> None:
        """Fold a call's measurements in: its compute seconds (the call less its compiles)
        against the plan's FLOPs, and each compile's seconds."""
        if not self.measured:
            return
        for t in compile_times:
            self.compile_seconds += SMOOTHING * (t - self.compile_seconds)
        compute = seconds - sum(compile_times)
        if plan.flops > 0 and compute > 0:
            self.seconds_per_flop += SMOOTHING * (compute / plan.flops - self.seconds_per_flop)
        log.debug("path %s: %.3f s compute, %d compiles; now %.3g s/GFLOP, %.2f s/compile", plan.path.name,
                  compute, len(compile_times), self.seconds_per_flop * 1e9, self.compile_seconds)
