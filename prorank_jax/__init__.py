"""prorank-jax: ProRank rerankers (GRPO prompt warmup + fine-grained score learning) in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
    # The Reranker lives in scoring/ (inference shares the stage-2 score code); importing it
    # lazily keeps `import prorank_jax` light and free of an import cycle.
    if name in ("Reranker", "RankResult"):
        from scoring import reranker

        return getattr(reranker, name)
    raise AttributeError(f"module 'prorank_jax' has no attribute {name!r}")
