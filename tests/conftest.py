import pytest
import torch

from tests.cases import CASES, Case


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: the tests' tensors are tiny, where threads cost more than they
    give, and dense LAPACK references crawl when several OpenMP threads share 2 busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=CASES, ids=lambda case: case.name)
def case(request) -> Case:
    """Each of the shared (model, loss) cases in turn; call it for a fresh instance."""
    return request.param
