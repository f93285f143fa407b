"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: on a busy 2-core machine extra OpenMP/BLAS threads only spin (see docs/evaluation.md)."""
    from threadpoolctl import threadpool_limits
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(prev)
