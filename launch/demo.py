"""`prorank demo`: the bundled tiny default, end to end.

Builds the bundled tiny Qwen2 model with random weights, writes it as a Hugging
Face folder, loads it back and reports parity: tensors bit-identical, JAX logits
equal before and after, and (when PyTorch is installed) transformers' logits on
the exported folder against ours.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from prorank_jax import hf, model
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir, bundled_tokenizer_dir


def parity_report(out_dir: Path, seed: int = 0) -> list[tuple[str, str]]:
    config = ModelConfig.from_hf(json.loads((bundled_data_dir() / "tiny_model.json").read_text()))
    params = model.init_params(config, jax.random.key(seed))
    folder = hf.save(params, config, out_dir / "tiny-hf", tokenizer_dir=bundled_tokenizer_dir())
    config2, params2 = hf.load(folder)

    rows = [("parameters", f"{model.count_params(params):,}"), ("exported to", str(folder))]
    same = all(
        np.asarray(a).tobytes() == np.asarray(b).tobytes()
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2))
    )
    rows.append(("ours -> HF -> ours tensors bit-identical", str(same and config2 == config)))

    rng = np.random.RandomState(seed)
    ids = rng.randint(0, config.vocab_size, (4, 32)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :10] = 0
    mask[3, :25] = 0
    ours = np.asarray(model.full_logits(params, config, ids, mask))
    again = np.asarray(model.full_logits(params2, config2, ids, mask))
    real = mask.astype(bool)
    rows.append(("logits max |diff| after round trip", f"{np.abs(ours - again)[real].max():.2e}"))
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        rows.append(("transformers (PyTorch) parity", "skipped: torch is not installed"))
        return rows
    torch_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                          position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
    rows.append(("transformers vs ours logits max |diff|", f"{np.abs(ref - ours)[real].max():.2e}"))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prorank demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = parity_report(out, args.seed)
    width = max(len(k) for k, _ in rows)
    print("prorank-jax parity report (bundled tiny Qwen2 model)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0
