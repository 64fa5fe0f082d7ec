"""datafree_kd.py with a recorder around it, for the torchrun tests (tests/test_distributed.py).

    torchrun --standalone --nproc_per_node=2 tests/dist_probe.py PROBE_DIR datafree_kd.py-flags...

Registers ``probe_gn`` (in its own processes only), a small student without BatchNorm (GroupNorm only), so that one
data-parallel KD step over two half batches must equal one step over the whole batch. Each
rank writes PROBE_DIR/rank{R}.pt with, for every round: the generator after the synthesis
call, the KD batches it drew, and the student before and after the KD steps; and the
number of checkpoints it wrote itself, and its exit status. With PROBE_SIGTERM=R,N in the
environment, rank R sends itself SIGTERM during its N-th KD step (the other ranks get none).
"""
import os
import signal
import sys

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import registry  # noqa: E402


class ProbeNet(nn.Module):
    """conv -> GroupNorm -> ReLU -> conv (stride 2) -> GroupNorm -> ReLU -> pool -> linear; no batch statistics."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x, return_features=False):
        features = self.features(x)
        logits = self.fc(features)
        return (logits, features) if return_features else logits


def main():
    registry.register_model("probe_gn")(ProbeNet)   # only in the torchrun processes
    import datafree_kd
    from datafree import engine, run_state

    probe_dir, argv = sys.argv[1], sys.argv[2:]
    record = {"rounds": [], "saves": 0, "kd_steps": 0, "exit": 0}
    rank = int(os.environ.get("RANK", "0"))
    signal_rank, signal_step = (int(v) for v in os.environ.get("PROBE_SIGTERM", "-1,0").split(","))
    real_distill, real_save = engine.distill_steps, run_state.save_checkpoint

    def clone_state(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def distill_steps(synthesizer, student, teacher, optimizer, precision, steps, stop=None):
        module = getattr(student, "module", student)
        batches, real_sample = [], synthesizer.sample

        def sample():
            record["kd_steps"] += 1
            if rank == signal_rank and record["kd_steps"] == signal_step:
                os.kill(os.getpid(), signal.SIGTERM)
            batch = real_sample()
            batches.append(batch.images.detach().clone())
            return batch

        entry = {"generator": clone_state(synthesizer.generator), "before": clone_state(module)}
        synthesizer.sample = sample
        try:
            out = real_distill(synthesizer, student, teacher, optimizer, precision, steps, stop=stop)
        finally:
            del synthesizer.sample
        entry.update(batches=batches, after=clone_state(module))
        record["rounds"].append(entry)
        return out

    def save_checkpoint(state, run_dir, is_best, best_state=None):
        record["saves"] += 1
        return real_save(state, run_dir, is_best, best_state)

    engine.distill_steps, run_state.save_checkpoint = distill_steps, save_checkpoint
    try:
        datafree_kd.run_cli(datafree_kd.main, argv)
    except SystemExit as stop:
        record["exit"] = stop.code
        raise
    finally:
        os.makedirs(probe_dir, exist_ok=True)
        record["rank"] = int(os.environ.get("RANK", "0"))      # the process group is gone by now
        torch.save(record, os.path.join(probe_dir, f"rank{record['rank']}.pt"))


if __name__ == "__main__":
    main()
