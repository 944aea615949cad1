"""key=value overrides of run configs."""

import pytest

from launch import config as cfglib


def test_overrides_set_nested_values_and_new_sections():
    raw = cfglib.load_config("grpo_tiny", ["optimizer.learning_rate=1e-4", "grpo.group_size=4",
                                           "newsection.x=1", "grpo.reward_weights={format: 0.1, correctness: 1.0}"])
    assert raw["optimizer"]["learning_rate"] == 1e-4 and raw["grpo"]["group_size"] == 4
    assert raw["newsection"] == {"x": 1}
    assert raw["grpo"]["reward_weights"] == {"format": 0.1, "correctness": 1.0}


def test_a_dotted_key_into_an_unset_mapping_field_is_refused_not_truncated():
    with pytest.raises(cfglib.RunConfigError, match=r"grpo\.reward_weights is not set .* whole mapping"):
        cfglib.load_config("grpo_tiny", ["grpo.reward_weights.format=0.1"])


def test_malformed_overrides_are_named():
    with pytest.raises(cfglib.RunConfigError, match="expected KEY=VALUE"):
        cfglib.load_config("grpo_tiny", ["optimizer.learning_rate"])
    with pytest.raises(cfglib.RunConfigError, match="'learning_rate' is not a section"):
        cfglib.load_config("grpo_tiny", ["optimizer.learning_rate.x=1"])


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    raw = cfglib.load_config("grpo_tiny", ["optimizer.learning_rate=3e-5", "grpo.beta=-1E2", "data.seed=7"])
    assert raw["optimizer"]["learning_rate"] == 3e-5 and raw["grpo"]["beta"] == -100.0 and raw["data"]["seed"] == 7
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  learning_rate: 2e-4\n  name: e5\nmodel:\n  tokenizer: 1e5x\n")
    raw = cfglib.load_config(path)
    assert raw["optimizer"] == {"learning_rate": 2e-4, "name": "e5"} and raw["model"]["tokenizer"] == "1e5x"


# ----------------------------------------------------------------------------- loop: watching a run
def _loop(overrides):
    from prorank_jax.training import LoopConfig

    return cfglib.section(cfglib.load_config("score_tiny", overrides), "loop", LoopConfig)


def test_watching_keys_of_the_loop_section_resolve():
    loop = _loop(["loop.profile_steps=[3, 5]", "loop.wandb={project: prorank, tags: [a, b], mode: offline}",
                  "loop.tensorboard=false"])
    assert loop.profile_steps == (3, 5) and loop.tensorboard is False
    assert loop.wandb == {"project": "prorank", "tags": ["a", "b"], "mode": "offline"}
    default = _loop([])
    assert default.profile_steps is None and default.wandb is None and default.tensorboard is True


@pytest.mark.parametrize("override, message", [
    ("loop.profile_steps=[5, 3]", r"score_tiny.yaml: section 'loop': loop.profile_steps=\[5, 3\] must satisfy"),
    ("loop.profile_steps=4", r"loop.profile_steps=4 must be two step numbers"),
    ("loop.profile_steps=[1, 500]", r"last <= loop.steps=200"),
    ("loop.wandb={entity: me}", r"score_tiny.yaml: section 'loop': loop.wandb.project is required"),
    ("loop.wandb={project: p, porject: q}", r"unknown key\(s\) \['loop.wandb.porject'\]"),
    ("loop.profile=[1, 2]", r"unknown key\(s\) \['loop.profile'\]"),
])
def test_bad_watching_keys_are_errors_naming_the_file_and_key(override, message):
    with pytest.raises(cfglib.RunConfigError, match=message):
        _loop([override])
