import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def random_backbones():
    """One random-init backbone per family, built once per test session."""
    from harness.models.random_models import RANDOM_FAMILIES, build_random

    return {name: build_random(name) for name in RANDOM_FAMILIES}
