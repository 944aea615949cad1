"""prorank_jax.aot without the TPU compiler: topology names and the loop FLOP correction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from prorank_jax import aot


@pytest.mark.parametrize("name, generation, shape, per_host", [
    ("v4-8", "v4", (2, 2, 1), (2, 2, 1)),
    ("v4-32", "v4", (2, 2, 4), (2, 2, 1)),
    ("v5e-8", "v5e", (2, 4), (2, 4, 1)),
    ("v5litepod-8", "v5e", (2, 4), (2, 4, 1)),
    ("v5e-32", "v5e", (4, 8), (2, 2, 1)),
    ("v5p-8", "v5p", (2, 2, 1), (2, 2, 1)),
    ("v6e-8", "v6e", (2, 4), (2, 4, 1)),
    ("v5e:2x4", "v5e", (2, 4), (2, 4, 1)),
    ("v4:2x2x1", "v4", (2, 2, 1), (2, 2, 1)),
    ("v5e:4x8", "v5e", (4, 8), (2, 2, 1)),
])
def test_topology_names(name, generation, shape, per_host):
    topology = aot.resolve_topology(name)
    assert (topology.generation, topology.shape, topology.chips_per_host) == (generation, shape, per_host)
    # Cloud names count TensorCores on v4 / v5p (2 per chip), chips on v5e / v6e.
    if "-" in name:
        cores_per_chip = 2 if generation in ("v4", "v5p") else 1
        assert topology.num_chips * cores_per_chip == int(name.rsplit("-", 1)[1])


@pytest.mark.parametrize("name", ["v9-8", "v5e", "v5e:2y4", "tpu", ""])
def test_unknown_topology_lists_the_known_ones(name):
    with pytest.raises(aot.TopologyError) as err:
        aot.resolve_topology(name)
    message = str(err.value)
    assert repr(name) in message
    for known in ("v4-8", "v4-32", "v5e-8", "v5litepod-8", "v5e-32", "v5p-8", "v6e-8", "v5e:2x4"):
        assert known in message


def test_loop_flops_count_every_scan_iteration_and_each_body_once():
    rows, width, layers = 16, 32, 6

    def f(x, w, v):
        def body(h, wi):
            return jnp.tanh(h @ wi), None

        h = jax.lax.scan(body, x, w)[0]
        h = jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ v, c[1] + 1), (h, 0))[0]
        return h @ v

    x = jax.ShapeDtypeStruct((rows, width), jnp.float32)
    w = jax.ShapeDtypeStruct((layers, width, width), jnp.float32)
    v = jax.ShapeDtypeStruct((width, width), jnp.float32)
    matmul = 2 * rows * width * width
    jaxpr = jax.make_jaxpr(jax.jit(f))(x, w, v).jaxpr
    full, once = aot.loop_flops(jaxpr, while_trips=3)
    assert full == (layers + 3 + 1) * matmul
    assert once == 3 * matmul
    # Under grad: the forward scan (one matmul per layer) and the backward scan (two: the
    # gradients of the input and of the weight).
    def loss(w):
        return jnp.sum(jax.lax.scan(lambda h, wi: (h @ wi, None), jnp.ones((rows, width)), w)[0])

    full, once = aot.loop_flops(jax.make_jaxpr(jax.grad(loss))(w).jaxpr)
    assert (full, once) == (3 * layers * matmul, 3 * matmul)


def test_roofline_is_the_slower_of_compute_and_memory():
    chip = aot.CHIPS["v5e"]
    assert aot.roofline_seconds(chip.peak_bf16_flops, 0.0, chip) == pytest.approx(1.0)
    assert aot.roofline_seconds(0.0, 2 * chip.hbm_bytes_per_s, chip) == pytest.approx(2.0)


def test_hbm_table():
    assert {g: c.hbm_bytes / aot.GiB for g, c in aot.CHIPS.items()} == {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def test_refused_temporaries_are_read_from_the_compiler_message():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(35.83G) exceeds available HBM (15.75G).")
    assert aot.refused_temp_bytes(message) == int(35.83 * aot.GiB)
    assert aot.refused_temp_bytes("RESOURCE_EXHAUSTED: something else") is None
