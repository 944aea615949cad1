"""The bundled learning runs shared by the stage-1 and stage-2 learning tests: GRPO from
the bundled warm start (grpo_tiny_warm.yaml), then stage 2 from its checkpoint
(score_tiny_warm.yaml), each run once per test session."""

from __future__ import annotations

from pathlib import Path

from launch import config as cfglib

QUIET = ["loop.progress_bar=false"]


def run_stage1(out_dir: Path) -> dict:
    from launch.train_grpo import run_grpo

    raw = cfglib.load_config("grpo_tiny_warm", [f"out_dir={out_dir}", "loop.eval_every=50", *QUIET])
    return run_grpo(raw)


def run_stage2(stage1_dir: Path, out_dir: Path) -> dict:
    from launch.train_score import run_score

    raw = cfglib.load_config("score_tiny_warm", [f"out_dir={out_dir}", f"model.path={stage1_dir}", *QUIET])
    return run_score(raw)
