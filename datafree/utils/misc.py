"""Seeding, device selection and random-state capture."""
import random

import numpy as np
import torch

from datafree.errors import UsageError


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(gpu):
    """``None``: the first GPU if there is one, else the CPU; ``-1``: the CPU; ``k``: GPU k."""
    if gpu is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if gpu < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--gpu {gpu} was given but CUDA is not available; drop --gpu to run on the CPU")
    if gpu >= torch.cuda.device_count():
        raise UsageError(f"--gpu {gpu} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(f"cuda:{gpu}")


def rng_state():
    """Random states of Python and torch (CPU and CUDA), storable with weights_only."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what ``rng_state`` captured (tensors may come back on any device)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
