"""The Reranker: mxbai-rerank-v2's `predict` / `rank`, score for score, on JAX.

    reranker = Reranker.from_pretrained("path/to/model")       # HF folder or prorank run folder
    reranker.rank("what is X?", documents, top_k=10)           # -> [RankResult(index, score, document)]
    reranker.predict(queries, documents, normalize=True)       # -> np.ndarray float32

Semantics follow mxbai-rerank 0.1.6 (MxbaiRerankV2 + BaseReranker):
  * prompts and truncation are prorank_jax.prompts (checked id for id against mxbai);
  * the score is prorank_jax.score.rerank_scores: logit("1") - logit("0") at the last position,
    float32 whatever the compute dtype;
  * normalize=True is sigmoid(score - estimated_max / 2) (sigmoid(score), the probability of
    "yes", for the qwen3-reranker prompt family); estimated_max defaults to mxbai's
    table for the two hub ids and 12.0 otherwise (a local folder is "otherwise", as in mxbai);
  * rank() orders by score descending, ties by document index ascending (mxbai's lexsort).
    mxbai first takes an argpartition top-k, whose choice among ties at the k-th place is
    arbitrary; here that choice is the lowest indices, so results are deterministic.

Where this differs from mxbai, on purpose and without changing a score beyond float noise:
  * pairs are sorted by token length and cut into batches of at most `batch_size` pairs and
    at most `max_batch_tokens` padded tokens (with rows x length^2 bounded too, see
    `rows_within_budget`), so memory stays bounded at 8K tokens per pair, each batch padded
    on the left to a length bucket (see `length_buckets`) rather than to the batch maximum;
    the row counts stay in row_sizes(batch_size), so the budget adds no compiled shapes;
  * the last batch of a call is filled up with copies of its first row to the next power of
    two (at most batch_size), so the number of compiled shapes stays bounded:
        at most len(length_buckets(L)) * len(row_sizes(B))
    for L = prompt.max_total_length and B = batch_size (see `max_compiled_shapes`), and one
    call compiles at most one shape per batch it runs;
  * pairs of one query share their first tokens (chat prefix + query ids, the same for every
    document since the query is cut on its own), and the shared-prefix path computes them once
    (reuse_prefix=True, or a call with at least 2 pairs per distinct query when None):
    `query_groups` groups pairs by query, `shared_prefix_lengths` finds each group's common
    prefix (capped one token short of its shortest prompt), and `plan_prefix_chunks` cuts
    the groups into chunks of batch_size. Each chunk's prefixes are prefilled once, left-padded
    to a power-of-two `prefix_buckets` length P, into a KV cache; each batch of the chunk's
    pairs then gathers its rows of that cache and runs only the remainders, right-padded to a
    `length_buckets` length R, on top of it (prorank_jax.score.scores_after_prefix; the score is
    read at each row's last real token). Filler rows pad chunks and batches as above, so the
    model programs this path compiles are at most
        len(row_sizes(B)) * len(prefix_buckets(L)) * (1 + len(length_buckets(L)))
    (see `max_compiled_prefix_shapes`), of which a rank() call touches one prefill shape and the extend shapes of its remainder buckets,
    about as many as the whole-prompt path compiles for it; the gather between the two is a
    model-free program per (chunk rows, P, batch rows), compiled in milliseconds. Whole
    prompts and the shared-prefix path give the same scores to float noise;
    reuse_prefix=False keeps the whole-prompt path, True forces the shared-prefix one;
  * with packed tokens (pack_tokens=True; a candidate on CPU when None) only each batch's real tokens run
    through the projections and MLPs, as one packed [tokens, hidden] array
    (model.forward_hidden's token_slots); attention alone sees the padded rows x length
    layout. Padding then costs attention work only, and filler rows cost nothing. The
    packed length is the real token count rounded up to 1/PACK_STEPS of the padded
    batch, so each padded shape above compiles in at most PACK_STEPS packed variants (the
    bounds with packed_per_shape=PACK_STEPS; tests/scoring/test_compile_bounds.py works them
    out for Qwen2.5 at max_length=8192), of which a call meets at most one per batch;
  * reuse_prefix / pack_tokens left at None are decided per call by scoring.path_cost, which
    weighs each candidate path's compute against compiling the programs it lacks (a fresh
    process runs whole prompts, one program, until the faster path's compiles pay off);
  * no [batch, length, vocab] logits are formed, only two LM-head columns are read;
  * every local device takes part: the parameters sit on a mesh over this process's
    devices (replicated, or FSDP-sharded by prorank_jax.sharding's rule table with
    shard_params=True) and each batch is split on its rows over the mesh when its row count
    divides by the device count (a smaller last batch runs replicated). The mesh holds this
    process's devices only, so processes never wait on each other; scoring.evaluate splits
    the queries over processes. Handed training parameters (stage-2 validation), the
    reranker runs on their mesh instead, the same batch on every process;
  * documents (or queries) cut by the truncation rules are counted and reported in a
    TruncationWarning; nothing is dropped.
"""

from __future__ import annotations

import numbers
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from prorank_jax import paths
from prorank_jax import sharding as shd
from prorank_jax.config import COMPUTE_DTYPES, ModelConfig
from prorank_jax.dtypes import dtype_of
from prorank_jax.prompts import EncodedPair, detect_prompt_family, estimated_max_for, left_pad
from prorank_jax.prompts import prompt_family as _prompt_family
from prorank_jax.pretrained import (BUNDLED, BUNDLED_WARM_START, ModelSource, load_pretrained, load_tokenizer,
                                    source_folder, tokenizer_dir_of)
from prorank_jax.run_folder import CHECKPOINTS_DIR, HF_FOLDER, RUN_FOLDER, RUN_FOLDER_FILES, TOKENIZER_DIR, folder_kind
from scoring.programs import jitted_prefix_scorer, jitted_scorer  # noqa: F401 (jitted_scorer: launch.compile_for)
from scoring.path_cost import ModelCost, PathChooser, ScoringPath, PathPlan, prefix_plan, whole_plan
from scoring.batching import (
    DEFAULT_STEPS_PER_OCTAVE,
    PACK_STEPS,
    Batch,
    PrefixChunk,
    batch_arrays,
    default_max_batch_tokens,
    length_buckets,
    max_compiled_prefix_shapes,
    max_compiled_shapes,
    plan_batches,
    plan_prefix_chunks,
    prefix_buckets,
    query_groups,
    right_pad,
    row_sizes,
    rows_for,
    shared_prefix_lengths,
    token_slots,
)

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 8192  # mxbai's default
# reuse_prefix=None (auto) takes the shared-prefix path from this many pairs per query on.
AUTO_REUSE_MIN_PAIRS_PER_QUERY = 2


class TruncationWarning(UserWarning):
    """Some prompts were cut by mxbai's truncation rules (counts in the message)."""


@dataclass(frozen=True)
class RankResult:
    """One ranked document: its index in the input list, its score, the text (or None)."""

    index: int
    score: float
    document: str | None


def top_k_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores: score descending, ties by index ascending."""
    scores = np.asarray(scores)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k]


def truncation_counts(encoded: Sequence[EncodedPair]) -> tuple[int, int]:
    """(pairs whose query was cut, pairs whose document was cut)."""
    return sum(e.query_truncated for e in encoded), sum(e.document_truncated for e in encoded)


def default_pack_tokens(backend: str | None = None) -> bool:
    """pack_tokens=None resolves to this: packed batches on CPU only (see Reranker)."""
    return (backend or jax.default_backend()) == "cpu"


def default_dtype(backend: str | None = None) -> str:
    """float32 on CPU (bfloat16 matmuls are slow there and the reference is float32),
    bfloat16 on accelerators."""
    backend = backend or jax.default_backend()
    return "float32" if backend == "cpu" else "bfloat16"


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_text_list(name: str, values: Any) -> list:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
    return list(values)


# ----------------------------------------------------------------------------- Reranker
class Reranker:
    """A ProRank / mxbai-rerank-v2 style reranker on JAX (see the module docstring).

    Args:
      config, params: the decoder (prorank_jax.hf.load or run_folder_io.load_for_inference).
      tokenizer: a transformers tokenizer with the Qwen chat tokens.
      max_length: token budget for query + document, mxbai's max_length (lowered to fit
        the model's max_position_embeddings with the template).
      dtype: compute dtype; None means float32 on CPU, bfloat16 elsewhere. Weights are
        stored in it too (they are only read). Scores are float32 either way.
      batch_size: most pairs per forward pass (short pairs get this many).
      max_batch_tokens: most padded tokens per forward pass (prefix cache slots included);
        long pairs go fewer to a batch (one at least), and rows x length x keys stays within
        max_batch_tokens x ATTENTION_SPAN. None means the platform default
        (DEFAULT_MAX_BATCH_TOKENS: 32,768 on CPU and TPU, 65,536 on GPU).
      estimated_max: for normalize=True; None means mxbai's default for `model_id`.
      show_progress: tqdm bar for calls of more than one batch; None shows it on a terminal only.
      steps_per_octave: length-bucket granularity (see length_buckets).
      model_id: name used for the estimated_max lookup (mxbai keys it by hub id).
      prompt_family: "mxbai-v2" (None, the default) or "qwen3-reranker" (prorank_jax.prompts):
        the prompt, its answer tokens, its truncation and what normalize=True means. For
        qwen3-reranker max_length is the whole prompt's length, as in its model card.
      reuse_prefix: run each query's shared prompt prefix once per call and only the rest
        of each pair on top of its cached keys/values (True), always run whole prompts
        (False), or decide per call (None): with at least AUTO_REUSE_MIN_PAIRS_PER_QUERY
        pairs per distinct query (rank() with two or more documents) scoring.path_cost picks
        the path. Scores agree to float noise either way.
      pack_tokens: run only each batch's real tokens through the projections and MLPs
        (packed, see scoring.batching.token_slots) rather than its padded rows x length;
        attention keeps the padded layout. Same scores to float noise, less work whenever
        a batch mixes lengths, at the price of up to PACK_STEPS compiled variants per
        padded shape. None (auto) lets scoring.path_cost decide per call on CPU, where the
        saved FLOPs are the time, and is off on GPU/TPU, where the gain was not measured,
        and on several devices, where packing would gather tokens of rows on other devices.
      devices: the devices the batches are split over (default: all of this process's).
      shard_params: FSDP-shard the parameters over those devices (for a model that does
        not fit one device) instead of replicating them. Same scores either way.
    """

    def __init__(
        self,
        config: ModelConfig,
        params: Any,
        tokenizer: Any,
        *,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        dtype: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        estimated_max: float | None = None,
        show_progress: bool | None = None,
        steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE,
        model_id: str | None = None,
        max_batch_tokens: int | None = None,
        reuse_prefix: bool | None = None,
        pack_tokens: bool | None = None,
        prompt_family: str | None = None,
        devices: Sequence[Any] | None = None,
        shard_params: bool = False,
    ):
        dtype = dtype or default_dtype()
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.max_batch_tokens = (default_max_batch_tokens(jax.default_backend()) if max_batch_tokens is None
                                 else _check_positive_int("max_batch_tokens", max_batch_tokens))
        self.config = config.replace(dtype=dtype, param_dtype=dtype)
        target = dtype_of(dtype)
        devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = shd.make_mesh(data=1, fsdp=-1, devices=devices) if shard_params else \
            shd.make_mesh(data=-1, devices=devices)
        cast = jax.tree_util.tree_map(lambda x: jnp.asarray(x, target), params)
        self.params = jax.device_put(cast, shd.param_shardings(cast, self.mesh))
        self.tokenizer = tokenizer
        self.family = _prompt_family(prompt_family)
        self.prompt = self.family.prompt(tokenizer, max_length, config.max_position_embeddings)
        self.pad_id = _pad_id(tokenizer)
        self.estimated_max = float(estimated_max) if estimated_max is not None else estimated_max_for(model_id)
        self.show_progress = show_progress
        self.buckets = length_buckets(self.prompt.max_total_length, steps_per_octave)
        self.steps_per_octave = steps_per_octave
        if reuse_prefix not in (None, True, False):
            raise ValueError(f"reuse_prefix must be True, False or None (auto), got {reuse_prefix!r}")
        self.reuse_prefix = reuse_prefix
        if pack_tokens not in (None, True, False):
            raise ValueError(f"pack_tokens must be True, False or None (auto), got {pack_tokens!r}")
        if pack_tokens is None and not (default_pack_tokens() and self.mesh.size == 1):
            pack_tokens = False
        self.pack_tokens = pack_tokens  # None: decided per call (CPU, one device)
        self.prefix_buckets = prefix_buckets(self.prompt.max_total_length)
        self._score_fn = jitted_scorer(self.config, self.prompt.yes_id, self.prompt.no_id)
        self._prefix_fns = jitted_prefix_scorer(self.config, self.prompt.yes_id, self.prompt.no_id)
        # Shapes this reranker has run, each compiled once by jax.jit: whole prompts as
        # (rows, length, tokens); on the shared-prefix path, prefills as (rows, prefix
        # length) and extends as (rows, prefix length, remainder length, tokens). tokens is
        # the packed length (rows * length when pack_tokens is off).
        self.compiled_shapes: set[tuple[int, int, int]] = set()
        self.compiled_prefix_shapes: set[tuple[int, int]] = set()
        self.compiled_extend_shapes: set[tuple[int, int, int, int]] = set()
        # Every model program compiled, keyed as scoring.path_cost plans them, and the
        # per-call choice of path when reuse_prefix or pack_tokens is None.
        self.compiled_programs: set[tuple] = set()
        # One process measures; several keep the priors so they all choose alike (path_cost).
        self.path_chooser = PathChooser.for_backend(jax.default_backend(), measured=jax.process_count() == 1)
        self.model_cost = ModelCost.of(self.config)
        self.last_path: ScoringPath | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        dtype: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        estimated_max: float | None = None,
        show_progress: bool | None = None,
        steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE,
        step: int | None = None,
        reuse_prefix: bool | None = None,
        pack_tokens: bool | None = None,
        tokenizer: str | os.PathLike | None = None,
        prompt_family: str | None = None,
        max_batch_tokens: int | None = None,
    ) -> "Reranker":
        """Load an HF folder (config.json + safetensors + tokenizer) or a prorank run folder
        (run_config.json + model_config.json + tokenizer/ + checkpoints/; `step` picks a
        checkpoint, default the latest). `tokenizer` is a tokenizer folder to use instead of
        the model's own (for a model folder saved without tokenizer files). As in mxbai,
        estimated_max=None looks the path up in the table of hub ids, so a local folder gets
        the 12.0 default. prompt_family=None takes the folder's own (prompts.detect_prompt_family:
        its saved prompt_family, else a Qwen3-Reranker name, else mxbai-v2); a name forces it.
        "bundled_warm_start" (or "bundled") is the bundled tiny model with the bundled tokenizer,
        resolved as a run config's model.path is."""
        if str(path) in (BUNDLED_WARM_START, BUNDLED):
            source = ModelSource(path=BUNDLED_WARM_START)
            path, tokenizer = source_folder(source), tokenizer if tokenizer is not None else tokenizer_dir_of(source)
        path = paths.as_path(path)
        paths.check_bucket(path, write=False)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: model folder not found")
        kind = folder_kind(path)
        if kind is None:
            raise FileNotFoundError(
                f"{path}: neither an HF model folder (config.json + model.safetensors + tokenizer files) "
                f"nor a prorank run folder ({' + '.join(RUN_FOLDER_FILES)} + {TOKENIZER_DIR}/ + {CHECKPOINTS_DIR}/)"
            )
        if kind == HF_FOLDER and step is not None:
            raise ValueError(f"{path}: step={step} applies to prorank run folders, this is an HF folder")
        config, params, own_tokenizer = load_pretrained(path, step=step)
        if kind == RUN_FOLDER and own_tokenizer is None and tokenizer is None:
            raise FileNotFoundError(f"{path}: run folder has no tokenizer/ folder; a reranker needs the tokenizer")
        # An HF folder's own tokenizer files are its folder (load_tokenizer names what is missing).
        tokenizer_dir = tokenizer if tokenizer is not None else own_tokenizer or path
        return cls(
            config,
            params,
            load_tokenizer(tokenizer_dir, config),
            max_length=max_length,
            dtype=dtype,
            batch_size=batch_size,
            estimated_max=estimated_max,
            show_progress=show_progress,
            steps_per_octave=steps_per_octave,
            model_id=str(path),
            reuse_prefix=reuse_prefix,
            pack_tokens=pack_tokens,
            prompt_family=detect_prompt_family(path, prompt_family),
            max_batch_tokens=max_batch_tokens,
        )

    @property
    def max_compiled_shapes(self) -> int:
        """Bound on len(compiled_shapes) (whole prompts)."""
        bound = max_compiled_shapes(self.prompt.max_total_length, self.batch_size, self.steps_per_octave)
        return bound * self._packed_per_shape

    @property
    def max_compiled_prefix_shapes(self) -> int:
        """Bound on len(compiled_prefix_shapes) + len(compiled_extend_shapes)."""
        return max_compiled_prefix_shapes(
            self.prompt.max_total_length, self.batch_size, self.steps_per_octave, self._packed_per_shape
        )

    @property
    def _packed_per_shape(self) -> int:
        """Programs one padded shape can compile to: one per packed length when packing."""
        return 1 if self.pack_tokens is False else PACK_STEPS

    def uses_prefix_path(self, queries: Sequence[str]) -> bool:
        """Whether predict(queries, ...) may take the shared-prefix path: forced, or auto
        (reuse_prefix=None) with enough pairs per query, when scoring.path_cost decides."""
        if self.reuse_prefix is not None:
            return self.reuse_prefix
        distinct = len(set(queries))
        return distinct > 0 and len(queries) >= AUTO_REUSE_MIN_PAIRS_PER_QUERY * distinct

    def candidate_paths(self, queries: Sequence[str]) -> list[ScoringPath]:
        """The paths a predict(queries, ...) call chooses among (one when both are fixed)."""
        reuses = [True] if self.uses_prefix_path(queries) else [False]
        if self.reuse_prefix is None and reuses == [True]:
            reuses = [False, True]
        packs = [False, True] if self.pack_tokens is None else [self.pack_tokens]
        return [ScoringPath(reuse=r, pack=p) for r in reuses for p in packs]

    # ------------------------------------------------------------------------- public
    def predict(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        normalize: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Scores of the pairs (queries[i], documents[i]) as float32 [len(queries)]."""
        queries = _check_text_list("queries", queries)
        documents = _check_text_list("documents", documents)
        if len(queries) != len(documents):
            raise ValueError(f"got {len(queries)} queries but {len(documents)} documents; they pair up one to one")
        batch_size = self.batch_size if batch_size is None else _check_positive_int("batch_size", batch_size)
        if not queries:
            return np.zeros((0,), np.float32)
        encoded = self.prompt.encode_batch(queries, documents, instruction=instruction)
        self._warn_truncation(encoded)
        sequences = [e.input_ids for e in encoded]
        group_of = query_groups(queries)
        plans = [self._plan(path, sequences, group_of, batch_size) for path in self.candidate_paths(queries)]
        plan = self.path_chooser.choose(plans, self.compiled_programs)
        self.last_path, compile_times, start = plan.path, [], time.perf_counter()
        if plan.path.reuse:
            scores = self._score_ids_after_prefixes(sequences, group_of, plan, compile_times)
        else:
            scores = self._score_ids(sequences, plan, compile_times)
        self.path_chooser.observe(plan, time.perf_counter() - start, compile_times)
        if normalize:
            scores = self.family.normalize(scores, self.estimated_max).astype(np.float32)
        return scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int = 100,
        batch_size: int | None = None,
        instruction: str | None = None,
        return_documents: bool = True,
    ) -> list[RankResult]:
        """The top_k documents for one query, best first (ties: lower index first).

        No documents give an empty list (mxbai would fail on the empty top-k).
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query is empty; a reranking prompt needs a non-empty query")
        top_k = _check_positive_int("top_k", top_k)
        documents = _check_text_list("documents", documents)
        scores = self.predict([query] * len(documents), documents, instruction=instruction, batch_size=batch_size)
        return [
            RankResult(index=int(i), score=float(scores[i]), document=documents[i] if return_documents else None)
            for i in top_k_order(scores, top_k)
        ]

    # ------------------------------------------------------------------------- internals
    def _warn_truncation(self, encoded: Sequence[EncodedPair]) -> None:
        queries_cut, documents_cut = truncation_counts(encoded)
        if not (queries_cut or documents_cut):
            return
        warnings.warn(
            self.prompt.truncation_message(queries_cut, documents_cut, len(encoded)),
            TruncationWarning,
            stacklevel=_caller_stacklevel(),
        )

    def _progress_bar(self, pairs: int, batches: int):
        if self.show_progress is None:
            disable = batches <= 1 or not _stderr_is_terminal()
        else:
            disable = not self.show_progress
        return tqdm(total=pairs, desc="Reranking", unit="pair", disable=disable)

    def _plan(self, path: ScoringPath, sequences: Sequence[Sequence[int]], group_of: np.ndarray, batch_size: int) -> PathPlan:
        """The batches `path` would run for these prompts, with their programs and FLOPs."""
        if not path.reuse:
            lengths = [len(s) for s in sequences]
            return whole_plan(path, lengths, plan_batches(lengths, batch_size, self.buckets, self.max_batch_tokens),
                              self.model_cost)
        split = shared_prefix_lengths(sequences, group_of)
        rests = [seq[split[g]:] for seq, g in zip(sequences, group_of)]
        chunks = plan_prefix_chunks(split, [len(r) for r in rests], group_of, batch_size, self.prefix_buckets,
                                    self.buckets, self.max_batch_tokens)
        return prefix_plan(path, split, rests, chunks, self.model_cost)

    def _run(self, key: tuple, compile_times: list, fn, *args):
        """fn(*args), timing it when `key` is a program not compiled yet: jax compiles a new
        shape synchronously in the call, and only runs it asynchronously."""
        if key in self.compiled_programs:
            return fn(*args)
        start = time.perf_counter()
        out = fn(*args)
        compile_times.append(time.perf_counter() - start)
        self.compiled_programs.add(key)
        return out

    def _score_ids(self, sequences: Sequence[Sequence[int]], plan: PathPlan, compile_times: list) -> np.ndarray:
        batches, pack = plan.batches, plan.path.pack
        scores = np.zeros(len(sequences), np.float32)
        bar = self._progress_bar(len(sequences), len(batches))
        pending = None  # one batch in flight: tokens of the next batch are padded while it runs
        with bar:
            for batch in batches:
                ids, mask = batch_arrays(sequences, batch, self.pad_id)
                slots, tokens = self._token_slots([len(sequences[i]) for i in batch.indices], batch, True, pack)
                self.compiled_shapes.add((batch.rows, batch.length, tokens))
                out = self._run(("whole", batch.rows, batch.length, tokens, pack), compile_times, self._score_fn,
                                self.params, *self._place(ids, mask, slots))
                if pending is not None:
                    self._collect(scores, *pending, bar)
                pending = (batch, out)
            if pending is not None:
                self._collect(scores, *pending, bar)
        return scores

    def _score_ids_after_prefixes(
        self, sequences: Sequence[Sequence[int]], group_of: np.ndarray, plan: PathPlan, compile_times: list
    ) -> np.ndarray:
        """The shared-prefix path: each chunk of query groups has its prefixes prefilled once,
        then every batch of its pairs gathers its rows of that cache and runs only the
        remainders (see plan_prefix_chunks and prorank_jax.score.scores_after_prefix)."""
        split, rests, chunks, pack = plan.split, plan.rests, plan.chunks, plan.path.pack
        groups = group_of.tolist()
        first_pair: dict[int, int] = {}
        for i, g in enumerate(groups):
            first_pair.setdefault(g, i)
        fns = self._prefix_fns
        scores = np.zeros(len(sequences), np.float32)
        bar = self._progress_bar(len(sequences), sum(len(c.batches) for c in chunks))
        pending = None  # one batch in flight, as in _score_ids
        with bar:
            for chunk in chunks:
                prefixes = [sequences[first_pair[g]][: split[g]] for g in chunk.groups.tolist()]
                prefixes += [prefixes[0]] * (chunk.rows - len(prefixes))  # filler rows, never read
                ids, mask = left_pad(prefixes, chunk.length, self.pad_id)
                self.compiled_prefix_shapes.add((chunk.rows, chunk.length))
                cache = self._run(("prefill", chunk.rows, chunk.length), compile_times, fns.prefill, self.params,
                                  *self._place(ids, mask))
                row_of_group = {g: r for r, g in enumerate(chunk.groups.tolist())}
                for batch in chunk.batches:
                    members = batch.indices.tolist()
                    members += [members[0]] * (batch.rows - len(members))  # scores discarded
                    rows = np.array([row_of_group[groups[i]] for i in members], np.int32)
                    rest_ids, rest_lengths = right_pad([rests[i] for i in members], batch.length, self.pad_id)
                    # Filler rows keep one real token only: attention skips their padding
                    # (attention.rowwise_attention) as the packed dense layers skip them whole.
                    rest_lengths[len(batch.indices):] = 1
                    slots, tokens = self._token_slots([len(rests[i]) for i in batch.indices], batch, False, pack)
                    self.compiled_extend_shapes.add((batch.rows, chunk.length, batch.length, tokens))
                    rows, rest_ids, rest_lengths, slots = self._place(rows, rest_ids, rest_lengths, slots)
                    key = ("extend", batch.rows, chunk.length, batch.length, tokens, pack)
                    out = self._run(key, compile_times, fns.extend, self.params, fns.take(cache, rows), rest_ids,
                                    rest_lengths, slots)
                    if pending is not None:
                        self._collect(scores, *pending, bar)
                    pending = (batch, out)
            if pending is not None:
                self._collect(scores, *pending, bar)
        return scores

    def _place(self, *arrays):
        """Batch arrays on the parameters' mesh, split on their rows (see sharding.place_rows);
        None (no packing) stays None. A layout never changes what the jitted function
        computes, only where: each device runs the rows it holds."""
        mesh = shd.mesh_of(self.params)
        if mesh is None:
            return arrays
        return tuple(None if a is None else shd.place_rows(a, mesh) for a in arrays)

    @staticmethod
    def _token_slots(lengths: Sequence[int], batch: Batch, left_padded: bool, pack: bool) -> tuple[np.ndarray | None, int]:
        """The batch's packed token slots (its real pairs only: filler rows are not run) and
        how many token rows the dense layers run; (None, rows * length) when packing is off."""
        if not pack:
            return None, batch.rows * batch.length
        slots = token_slots(lengths, batch.rows, batch.length, left_padded)
        return slots, len(slots)

    @staticmethod
    def _collect(scores: np.ndarray, batch: Batch, out: jax.Array, bar) -> None:
        values = shd.fetch(out).astype(np.float32)[: len(batch.indices)]
        if not np.all(np.isfinite(values)):
            bad = batch.indices[~np.isfinite(values)]
            raise FloatingPointError(f"non-finite scores for pairs {bad[:10].tolist()} (check the weights / dtype)")
        scores[batch.indices] = values
        bar.update(len(batch.indices))


def _pad_id(tokenizer: Any) -> int:
    # Padded columns are masked out of attention and never read, so any valid id works;
    # the tokenizer's own pad id is preferred only for readability of dumped batches.
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _caller_stacklevel() -> int:
    """warnings.warn stacklevel of the first frame outside this file, so the warning points
    at the user's line whether it came through rank() or predict()."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _stderr_is_terminal() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = [
    "Batch",
    "PrefixChunk",
    "RankResult",
    "Reranker",
    "TruncationWarning",
    "length_buckets",
    "max_compiled_prefix_shapes",
    "max_compiled_shapes",
    "plan_batches",
    "plan_prefix_chunks",
    "prefix_buckets",
    "query_groups",
    "right_pad",
    "shared_prefix_lengths",
    "row_sizes",
    "rows_for",
    "top_k_order",
]
