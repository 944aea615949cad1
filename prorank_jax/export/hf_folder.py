"""Export a checkpoint as a Hugging Face folder that other reranking stacks load.

Two formats, one procedure (export_hf, export_seq_cls): resolve the checkpoint (a prorank
run folder at a step, or an HF folder), assemble the folder at a staging name beside
--out, self-check it (self_check.py), and only then rename it into place
(files.staged_dir), so a failed export leaves nothing behind.

The causal-LM folder (export_hf) holds:

* config.json, generation_config.json, model.safetensors (or shards), tokenizer files:
  a plain Qwen2/Qwen3 checkpoint, as written by ``prorank_jax.hf.save``. transformers'
  AutoModelForCausalLM and mxbai-rerank's ``MxbaiRerankV2`` (which builds its own prompt
  from the tokenizer) load it as they load any Qwen checkpoint.
* the sentence-transformers CrossEncoder files (sentence_transformers.py);
* prorank.json, the prompt family;
* README.md, the model card (model_card.py), with the run's facts (run_facts.py).

The sequence-classifier folder (export_seq_cls) is described in seq_cls.py.
--push-to-hub uploads the causal-LM folder afterwards (hub.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from prorank_jax import hf, paths
from prorank_jax.export.errors import ExportCheckError, ExportError
from prorank_jax.export.hub import hf_token, push_folder
from prorank_jax.export.model_card import DEFAULT_LICENSE, CardFacts, model_card, seq_cls_card
from prorank_jax.export.run_facts import HUB_ID, base_model_of, final_metrics, read_json, read_metrics_rows, stage_of
from prorank_jax.export.self_check import CHECK_ATOL, CheckResult, check_pairs, round_to, score_pairs, self_check
from prorank_jax.export.sentence_transformers import (
    RERANK_CHAT_TEMPLATE,
    sentence_transformers_files,
    tokenizer_has_chat_template,
)
from prorank_jax.export.seq_cls import (
    SEQ_CLS_ARCHITECTURES,
    pad_token_id_for,
    reload_scores,
    seq_cls_config,
    seq_cls_tensors,
)
from prorank_jax.files import staged_dir
from prorank_jax.prompts import MXBAI_V2, PRORANK_FILE, RerankPrompt, detect_prompt_family, prorank_file_text
from prorank_jax.prompts import prompt_family as _prompt_family
from prorank_jax.status import STATUS

EXPORT_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class ExportResult:
    """What export_hf wrote: the folder, the step it came from, its self-check, where it was pushed."""

    out_dir: Path
    step: int | None
    check: CheckResult
    pushed_to: str | None = None


def _resolve_source(checkpoint: Path, step: int | None):
    """(config, params, tokenizer dir or None, run folder or None, step)."""
    from prorank_jax.pretrained import load_pretrained
    from prorank_jax.run_folder import CHECKPOINTS_DIR, HF_FOLDER, RUN_FOLDER, RUN_FOLDER_FILES, folder_kind

    if not checkpoint.is_dir():
        raise ExportError(f"{checkpoint}: --checkpoint folder does not exist")
    kind = folder_kind(checkpoint)
    if kind is None:
        raise ExportError(f"{checkpoint}: neither a prorank run folder ({' + '.join(RUN_FOLDER_FILES)} + "
                          f"{CHECKPOINTS_DIR}/) nor an HF checkpoint folder (config.json + safetensors)")
    if kind == HF_FOLDER and step is not None:
        raise ExportError(f"{checkpoint}: --step applies to prorank run folders; this is an HF folder")
    errors: tuple[type[Exception], ...] = (hf.HFFolderError,)
    if kind == RUN_FOLDER:
        from prorank_jax import checkpoint as ckpt

        errors += (ckpt.CheckpointError,)
        if step is None:
            steps_dir = checkpoint / CHECKPOINTS_DIR
            complete, broken = ckpt.scan_steps(steps_dir)
            if not complete:
                listing = "".join(f"\n  {p}: {why}" for p, why in broken.items())
                raise ExportError(f"{steps_dir}: holds no complete checkpoint{listing}")
            step = complete[-1]
    try:
        config, params, tokenizer_dir = load_pretrained(checkpoint, step=step)
    except errors as err:
        raise ExportError(str(err)) from err
    if kind == RUN_FOLDER:
        return config, params, tokenizer_dir, checkpoint, int(step)
    return config, params, tokenizer_dir, None, None


def _check_dtype(dtype: str) -> None:
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype {dtype!r}: expected one of {EXPORT_DTYPES}")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ExportError(f"{out_dir}: --out exists and is not empty; pass --overwrite to replace it")


def _same_or_inside(out_dir, checkpoint) -> bool:
    if paths.is_remote(out_dir) or paths.is_remote(checkpoint):
        out, ckpt = str(out_dir).rstrip("/"), str(checkpoint).rstrip("/")
        return out == ckpt or out.startswith(ckpt + "/")
    return out_dir.resolve() == checkpoint.resolve() or checkpoint.resolve() in out_dir.resolve().parents


def _tokenizer_dir(checkpoint: Path, tokenizer: str | os.PathLike | None, found: Path | None) -> Path:
    """--tokenizer when given, else the tokenizer files the checkpoint holds."""
    tokenizer_dir = paths.local_folder(tokenizer) if tokenizer is not None else found
    if tokenizer_dir is None:
        raise ExportError(f"{checkpoint}: has no tokenizer files; pass --tokenizer DIR")
    return tokenizer_dir


def export_hf(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    step: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: str = "float32",
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    pairs: Sequence[tuple[str, str]] | None = None,
    prompt_family: str | None = None,
) -> ExportResult:
    """Write the HF / mxbai / sentence-transformers folder of a checkpoint (see the module docstring).

    checkpoint: a prorank run folder (step: default the latest complete one) or an HF folder.
    tokenizer: tokenizer folder, default the run's tokenizer/ (or the HF folder's own files).
    push_to_hub: a repo id to upload the folder to afterwards (needs HF_TOKEN).
    pairs: (query, document) pairs for the self-check; default a few bundled ones.
    prompt_family: force the family; default the checkpoint's (prompts.detect_prompt_family). It is
    written to the folder's prorank.json, and fixes its sentence-transformers template and card.
    The folder is assembled and self-checked beside out_dir and renamed into place only
    when the check passes; an existing non-empty out_dir needs overwrite=True.
    """
    _check_dtype(dtype)
    if push_to_hub is not None and not hf_token():
        raise ExportError(f"--push-to-hub {push_to_hub}: set HF_TOKEN to a Hugging Face token with write access "
                          "(nothing was written)")
    if push_to_hub is not None and not HUB_ID.match(push_to_hub):
        raise ExportError(f"--push-to-hub {push_to_hub!r}: expected a repo id like 'user/model-name'")
    checkpoint, out_dir = paths.as_path(checkpoint), paths.as_path(out_dir)
    paths.check_bucket(out_dir, write=True)
    _check_out_dir(out_dir, overwrite)
    if _same_or_inside(out_dir, checkpoint):
        raise ExportError(f"{out_dir}: --out must not be the checkpoint folder or inside it")

    config, params, found_tokenizer, run_dir, step = _resolve_source(checkpoint, step)
    tokenizer_dir = _tokenizer_dir(checkpoint, tokenizer, found_tokenizer)
    if not any((tokenizer_dir / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        raise ExportError(f"{tokenizer_dir}: --tokenizer folder has no tokenizer.json / vocab.json")

    from prorank_jax.pretrained import load_tokenizer

    try:
        family = detect_prompt_family(checkpoint, prompt_family)
    except ValueError as err:
        raise ExportError(f"{checkpoint}: {err}") from None
    try:
        prompt = _prompt_family(family).prompt(load_tokenizer(tokenizer_dir, config), None,
                                               config.max_position_embeddings)
    except ValueError as err:
        raise ExportError(f"{tokenizer_dir}: tokenizer unfit for the reranking prompt: {err}") from None

    # The training facts for the card: the run folder, or the run an HF folder was saved into
    # (`<run>/hf`, the final export of both stages).
    from prorank_jax.pretrained import is_run_folder

    facts_dir = run_dir or (checkpoint.parent if is_run_folder(checkpoint.parent) else None)
    run_config = read_json(facts_dir / "run_config.json") if facts_dir else {}
    summary = read_json(facts_dir / "summary.json") if facts_dir and (facts_dir / "summary.json").is_file() else {}
    train_step, train_metrics, eval_step, eval_metrics = final_metrics(
        read_metrics_rows(facts_dir) if facts_dir else [], step)
    loop = run_config.get("loop") if isinstance(run_config.get("loop"), Mapping) else {}
    facts = CardFacts(
        model_id=push_to_hub or out_dir.name, config=config, dtype=dtype, license=license,
        base_model=base_model or base_model_of(run_config), stage=stage_of(run_config) if facts_dir else "not recorded",
        step=step, total_steps=loop.get("steps"), train_step=train_step, train_metrics=train_metrics,
        eval_step=eval_step, eval_metrics=eval_metrics,
        evaluation=summary.get("eval", summary.get("evaluation")) if isinstance(summary, Mapping) else None,
        source=str(checkpoint) + (f" (step {step})" if step is not None else ""), prompt_family=family,
    )
    st_files = sentence_transformers_files(prompt.yes_id, prompt.no_id,
                                           write_chat_template=not tokenizer_has_chat_template(tokenizer_dir),
                                           family=family)
    flat = {name: text for name, text in st_files.items() if "/" not in name}
    nested = {name: text for name, text in st_files.items() if "/" in name}
    flat["README.md"] = model_card(facts)
    flat[PRORANK_FILE] = prorank_file_text(family)

    # Stage beside out_dir: hf.save fills the staging folder, the sentence-transformers
    # sub-folder is added, the folder is checked, and only then does it replace out_dir.
    with staged_dir(out_dir, "export") as staged:
        hf.save(params, config, staged, tokenizer_dir=tokenizer_dir, dtype=dtype, extra_files=flat)
        for name, text in nested.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_text(text)
        check = self_check(staged, config, params, tokenizer_dir, dtype, pairs, family=family)
    STATUS.info("exported %s%s to %s (%s); %s", checkpoint, f" step {step}" if step is not None else "", out_dir,
                dtype, check.line())

    pushed = None
    if push_to_hub is not None:
        pushed = push_folder(out_dir, push_to_hub)
    return ExportResult(out_dir, step, check, pushed)


def export_seq_cls(checkpoint, out_dir, *, step: int | None = None, tokenizer=None, dtype: str = "float32",
                   overwrite: bool = False, pairs: Sequence[tuple[str, str]] | None = None,
                   prompt_family: str | None = None):
    """Write the sequence-classifier folder (see seq_cls.py) of a run folder or HF folder, self-checked
    against the checkpoint before it is renamed into place."""
    from prorank_jax.pretrained import load_tokenizer

    _check_dtype(dtype)
    checkpoint, out_dir = paths.as_path(checkpoint), paths.as_path(out_dir)
    paths.check_bucket(out_dir, write=True)
    family = detect_prompt_family(checkpoint, prompt_family)
    if family != MXBAI_V2:
        # The classifier's chat template and score row are mxbai-v2's; vLLM serves a
        # qwen3-reranker causal LM directly with the overrides its model card gives.
        raise ExportError(f"{checkpoint}: --format seq-cls is for the mxbai-v2 prompt family, this model is "
                          f"{family!r}; export it with --format causal-lm (its card gives vLLM's overrides)")
    _check_out_dir(out_dir, overwrite)
    config, params, found_tokenizer, _, step = _resolve_source(checkpoint, step)
    tokenizer_dir = _tokenizer_dir(checkpoint, tokenizer, found_tokenizer)
    if config.model_type not in SEQ_CLS_ARCHITECTURES:
        raise ExportError(f"{checkpoint}: model_type {config.model_type!r} has no sequence-classification export")
    tok = load_tokenizer(tokenizer_dir, config)
    try:
        prompt = RerankPrompt(tok, None, config.max_position_embeddings)
    except ValueError as err:
        raise ExportError(f"{tokenizer_dir}: tokenizer unfit for the reranking prompt: {err}") from None

    pairs = list(pairs or check_pairs())
    expected = score_pairs(config, round_to(params, dtype), tok, pairs)
    source = str(checkpoint) + (f" (step {step})" if step is not None else "")
    with staged_dir(out_dir, "seqcls") as staging:
        hf_config = seq_cls_config(config, pad_token_id_for(config, tok), dtype)
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        hf.write_safetensors(staging / "model.safetensors",
                             seq_cls_tensors(params, config, prompt.yes_id, prompt.no_id, dtype))
        if not hf.copy_tokenizer_files(tokenizer_dir, staging):
            raise ExportError(f"{tokenizer_dir}: no tokenizer files to copy")
        (staging / "chat_template.jinja").write_text(RERANK_CHAT_TEMPLATE)
        (staging / "README.md").write_text(seq_cls_card(out_dir.name, config, dtype, source))
        got = reload_scores(staging, pairs)
        diff = float(np.max(np.abs(got - expected))) if pairs else 0.0
        if not np.all(np.isfinite(got)) or not diff <= CHECK_ATOL:
            raise ExportCheckError(f"{out_dir}: the classifier's scores differ from the checkpoint's by up to "
                                   f"{diff:.3g} (tolerance {CHECK_ATOL:g}) on {len(pairs)} pairs")
    STATUS.info("exported %s to %s as %s (%s); self-check: %d pairs, max |reloaded - checkpoint| = %.2e (<= %g)",
                source, out_dir, hf_config["architectures"][0], dtype, len(pairs), diff, CHECK_ATOL)
    return out_dir
