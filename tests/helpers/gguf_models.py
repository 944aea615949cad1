"""Tiny random GGUF files, written with the `gguf` package's writer as llama.cpp's converter
lays them out (tensor names, Q/K row permutation for Llama, tokenizer metadata), so tests
can import a GGUF without downloading one."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

# HF tensor suffix -> llama.cpp tensor name (per layer "blk.{i}.").
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf reorders Llama's q/k rows from HF's rotate-half layout to
    interleaved pairs; transformers' GGUF reader undoes it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_gguf(path: Path, state_dict: dict[str, np.ndarray], hf_config: dict, tokenizer_dir: Path,
               quantization: str | None = None, architecture: str = "llama") -> Path:
    """Write an HF model's tensors, config and tokenizer as a GGUF file.

    quantization names a ggml type ("Q8_0", "Q5_0", ...) for the 2-D weight matrices; norms
    and biases stay float32, as llama.cpp keeps them.
    """
    arch = architecture
    writer = gguf.GGUFWriter(str(path), arch)
    c = hf_config
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(c["num_attention_heads"])
    writer.add_head_count_kv(c["num_key_value_heads"])
    writer.add_rope_freq_base(float(c.get("rope_theta") or c["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_vocab_size(c["vocab_size"])
    writer.add_rope_dimension_count(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])

    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    vocab.update(special)
    tokens = [None] * c["vocab_size"]
    for text, i in vocab.items():
        tokens[i] = text
    # Rows of the embedding beyond the tokenizer's vocabulary get placeholder tokens.
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(special["<|im_start|>"])
    writer.add_eos_token_id(special["<|im_end|>"])
    writer.add_pad_token_id(special["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    for name, tensor in state_dict.items():
        tensor = np.ascontiguousarray(tensor, dtype=np.float32)
        if name.startswith("model.layers."):
            _, _, layer, suffix = name.split(".", 3)
            out_name = f"blk.{layer}.{_LAYER_NAMES[suffix]}"
            if arch == "llama" and suffix.startswith("self_attn.q_proj"):
                tensor = llama_cpp_permute(tensor, heads)
            elif arch == "llama" and suffix.startswith("self_attn.k_proj"):
                tensor = llama_cpp_permute(tensor, kv_heads)
        else:
            out_name = _GLOBAL_NAMES[name]
        if quantization and tensor.ndim == 2:
            qtype = gguf.GGMLQuantizationType[quantization]
            writer.add_tensor(out_name, gguf.quants.quantize(tensor, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(out_name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
