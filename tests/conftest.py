"""Session fixtures: the bundled stage-1 -> stage-2 learning runs (tests/helpers/warm_start_runs.py)
run once and serve both stages' learning tests."""

import pytest

from tests.helpers import warm_start_runs


@pytest.fixture(scope="session")
def warm_stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo-tiny-warm")
    return out, warm_start_runs.run_stage1(out)


@pytest.fixture(scope="session")
def warm_stage2(tmp_path_factory, warm_stage1):
    out = tmp_path_factory.mktemp("score-tiny-warm")
    return out, warm_start_runs.run_stage2(warm_stage1[0], out)
