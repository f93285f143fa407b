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


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """What `make demo` builds, tiny: simulated survey store, trained run, artifact set (tests/trained_fixtures.py).
    Built once per test session and shared by the dashboard's component, hostile-input and browser tests."""
    from trained_fixtures import make_trained_demo
    return make_trained_demo(tmp_path_factory.mktemp("trained-demo"))
