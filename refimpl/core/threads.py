"""Thread count for work too small to split across CPU threads."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_thread():
    """Run the `with` block (or decorated function) on one CPU thread, then restore the thread count.

    For work made of many small kernels (GPTQ's column loop) or small factorisations (a 1536² Cholesky),
    synchronising threads costs more than it saves: measured on 2 cores, 1.5-3× slower on 2 threads than
    on 1, many times slower when other processes share the cores. Large products keep every thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
