import os

import pytest
import torch

# Without CUDA, Triton kernels run on the CPU through the interpreter. The variable must be set
# before triton (or gpuwpo.kernels) is first imported, whichever test module does it first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture
def keep_threads():
    # The bench scripts set torch's thread count; restore it for the tests that follow.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread_module():
    """A whole module's small tensors on one intra-op thread, the setting restored after: on
    these shared 2-core machines a descheduled second OpenMP thread makes every elementwise
    pass over a few hundred values wait for a scheduler slice."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
