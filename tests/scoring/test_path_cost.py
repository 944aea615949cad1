"""The per-call choice of scoring path (scoring/path_cost.py): a ski rental between the
fastest path's compiles and the compute an already-compiled path costs more.

The chooser's decisions are checked on plans with exact numbers, and the Reranker's use of
it on the bundled tiny model: which programs a fresh process compiles, that the programs
the plans name are the ones jax compiles, and that every path gives the same scores."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.path_cost import WHOLE, ModelCost, PathChooser, PathPlan, ScoringPath
from scoring.reranker import Reranker

REUSE_PACK = ScoringPath(reuse=True, pack=True)
WHOLE_PACK = ScoringPath(reuse=False, pack=True)


def plan(path, flops, *programs):
    return PathPlan(path, tuple(programs), float(flops))


def test_fresh_process_rents_whole_prompts_until_the_forgone_compute_pays_for_the_compiles():
    # 1 s per FLOP and 8 s per compile: whole prompts cost 4 s a call, the prefix path 1 s
    # but two programs to compile (16 s), whole prompts one (8 s).
    chooser = PathChooser(seconds_per_flop=1.0, compile_seconds=8.0)
    plans = [plan(WHOLE, 4, "w"), plan(REUSE_PACK, 1, "prefill", "extend")]
    compiled, taken = set(), []
    for _ in range(7):
        chosen = chooser.choose(plans, compiled)
        compiled |= set(chosen.programs)
        taken.append((chosen.path, chooser.settled))
    # call 1 compiles whole prompts (3 s saved < 8 s more compile); calls 2-5 forgo 3 s each;
    # call 6 has forgone 18 s >= 16 s of compile and buys; call 7 is steady state
    assert taken == [(WHOLE, False)] * 5 + [(REUSE_PACK, True)] * 2
    assert compiled == {"w", "prefill", "extend"} and chooser.forgone == 0.0


def test_compute_bound_calls_compile_the_fastest_path_at_once():
    chooser = PathChooser(seconds_per_flop=1.0, compile_seconds=8.0)
    plans = [plan(WHOLE, 100, "w"), plan(REUSE_PACK, 10, "prefill", "extend")]
    assert chooser.choose(plans, set()).path == REUSE_PACK  # 90 s saved > 8 s more compile


def test_rent_prefers_a_compiled_candidate_and_fixed_settings_do_not_choose():
    chooser = PathChooser(seconds_per_flop=1.0, compile_seconds=8.0)
    plans = [plan(WHOLE, 4, "w"), plan(WHOLE_PACK, 3, "wp"), plan(REUSE_PACK, 1, "prefill", "extend")]
    assert chooser.choose(plans, {"w", "wp"}).path == WHOLE_PACK
    assert chooser.forgone == 2.0  # 3 s against the fastest's 1 s
    only = [plan(REUSE_PACK, 1, "prefill", "extend")]
    assert chooser.choose(only, set()).path == REUSE_PACK and chooser.forgone == 2.0


def test_measurements_move_the_estimates():
    chooser = PathChooser.for_backend("cpu")
    before = (chooser.seconds_per_flop, chooser.compile_seconds)
    chooser.observe(plan(WHOLE, 1e9, "w"), seconds=12.0, compile_times=[10.0])
    assert chooser.compile_seconds > before[1]  # 10 s measured against the 2 s prior
    assert chooser.seconds_per_flop > before[0]  # 2 s for 1 GFLOP against 30 GFLOP/s
    frozen = PathChooser.for_backend("cpu", measured=False)  # several processes: the priors stay
    frozen.observe(plan(WHOLE, 1e9, "w"), seconds=12.0, compile_times=[10.0])
    assert (frozen.seconds_per_flop, frozen.compile_seconds) == before
    cost = ModelCost.of(Reranker.from_pretrained("bundled_warm_start", show_progress=False).config)
    # the bundled model: hidden 64, 4 x 16 query heads, 2 x 16 kv heads, MLP 176, 2 layers
    assert cost.dense_per_token == 2 * 2 * (64 * (64 + 64) + 64 * 64 + 3 * 64 * 176)
    assert cost.attention_per_pair == 4 * 64 * 2


@pytest.fixture(scope="module")
def request_texts():
    query = "what do cells use light energy for"
    words = "photosynthesis light energy glucose cell mitochondria respiration plant leaf water".split()
    rng = np.random.RandomState(0)
    docs = [" ".join(rng.choice(words, size=int(rng.randint(5, 60)))) for _ in range(6)]
    return query, docs


def jit_caches(r):
    fns = r._prefix_fns
    return r._score_fn._cache_size(), fns.prefill._cache_size(), fns.extend._cache_size()


def programs_by_kind(r):
    return tuple(sum(1 for p in r.compiled_programs if p[0] == kind) for kind in ("whole", "prefill", "extend"))


def test_defaults_compile_one_program_first_then_the_fastest_path_with_the_same_scores(request_texts):
    query, docs = request_texts
    opts = dict(max_length=256, batch_size=8, show_progress=False)
    r = Reranker.from_pretrained("bundled_warm_start", **opts)
    assert r.reuse_prefix is None and r.pack_tokens is None and r.path_chooser.measured  # one process
    assert r.candidate_paths([query] * 6) == [ScoringPath(a, b) for a in (False, True) for b in (False, True)]
    assert r.candidate_paths(["a", "b"]) == [WHOLE, WHOLE_PACK]  # one pair per query: no prefix to share
    first = r.predict([query] * 6, docs)
    # a fresh process: whole prompts unpacked, one program (6 pairs in one batch of 8 rows)
    assert r.last_path == WHOLE and programs_by_kind(r) == jit_caches(r) == (1, 0, 0)
    r.path_chooser.compile_seconds = 0.0  # compiles now free: the fastest estimate is taken
    second = r.predict([query] * 6, docs)
    assert r.last_path == REUSE_PACK and r.path_chooser.settled
    assert programs_by_kind(r) == jit_caches(r) and programs_by_kind(r)[1:] == (1, 1)
    r.path_chooser.compile_seconds = 1e9  # compiles now dear: nothing left to compile anyway
    compiled = set(r.compiled_programs)
    np.testing.assert_allclose(r.predict([query] * 6, docs), second, rtol=0, atol=1e-6)
    assert r.last_path == REUSE_PACK and r.compiled_programs == compiled
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-5)
    for reuse in (False, True):
        for pack in (False, True):
            fixed = Reranker.from_pretrained("bundled_warm_start", reuse_prefix=reuse, pack_tokens=pack, **opts)
            assert fixed.candidate_paths([query] * 6) == [ScoringPath(reuse, pack)]
            np.testing.assert_allclose(fixed.predict([query] * 6, docs), first, rtol=0, atol=1e-5,
                                       err_msg=f"reuse_prefix={reuse} pack_tokens={pack}")
