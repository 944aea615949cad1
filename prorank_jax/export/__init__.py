"""`prorank export-hf`: a checkpoint as a folder that transformers, mxbai-rerank,
sentence-transformers and vLLM load, written only after it reproduces the checkpoint's scores.

The package is split by what each part owns:

  hf_folder.py              export_hf / export_seq_cls: resolve, stage, check, rename into place
  sentence_transformers.py  the CrossEncoder files and the reranking chat templates
  seq_cls.py                the one-label sequence-classifier format
  model_card.py             README.md of both formats
  run_facts.py              what a run folder says (metrics, stage, base model) for the card
  self_check.py             scoring the written folder against the checkpoint
  hub.py                    upload to the Hugging Face Hub
  errors.py                 ExportError, ExportCheckError

The names below are the public interface; import them from ``prorank_jax.export``.
"""

from prorank_jax.export.errors import ExportCheckError, ExportError
from prorank_jax.export.hf_folder import EXPORT_DTYPES, ExportResult, export_hf, export_seq_cls
from prorank_jax.export.hub import push_folder
from prorank_jax.export.model_card import (
    DEFAULT_LICENSE,
    CardFacts,
    count_params_of_config,
    model_card,
    seq_cls_card,
)
from prorank_jax.export.self_check import CHECK_ATOL, CheckResult, check_pairs, score_pairs, self_check
from prorank_jax.export.sentence_transformers import (
    CHAT_TEMPLATES,
    QWEN3_RERANK_CHAT_TEMPLATE,
    RERANK_CHAT_TEMPLATE,
    rerank_prompt_text,
    sentence_transformers_files,
)
from prorank_jax.export.seq_cls import SCORE_WEIGHT, SEQ_CLS_ARCHITECTURES

__all__ = [
    "CHAT_TEMPLATES",
    "CHECK_ATOL",
    "CardFacts",
    "CheckResult",
    "DEFAULT_LICENSE",
    "EXPORT_DTYPES",
    "ExportCheckError",
    "ExportError",
    "ExportResult",
    "QWEN3_RERANK_CHAT_TEMPLATE",
    "RERANK_CHAT_TEMPLATE",
    "SCORE_WEIGHT",
    "SEQ_CLS_ARCHITECTURES",
    "check_pairs",
    "count_params_of_config",
    "export_hf",
    "export_seq_cls",
    "model_card",
    "push_folder",
    "rerank_prompt_text",
    "score_pairs",
    "self_check",
    "sentence_transformers_files",
    "seq_cls_card",
]
