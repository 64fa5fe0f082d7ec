"""The benchmarks run (tiny sizes) and end with their one-line summary."""
import os
import re
import subprocess
import sys

from conftest import ROOT


def run_benchmark(name, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_pool_scale_reports_persist_time_memory_and_checkpoint_size(tmp_path):
    lines = run_benchmark("pool_scale.py", "--sizes", "16", "64", "--epochs", "2", "--workdir", str(tmp_path))
    summary = re.fullmatch(r"pool_scale: persist_s ratio largest/smallest = ([\d.]+), rss ratio = ([\d.]+), "
                           r"last.pth ratio = ([\d.]+)", lines[-1])
    assert summary, lines[-1]
    assert float(summary.group(3)) < 1.05        # last.pth does not hold the pool
    rows = [line for line in lines if re.match(r"\s+\d", line)]
    assert [int(r.split("|")[0].replace(",", "")) for r in rows] == [16, 64]


def test_pool_storage_times_both_storages_at_both_sizes():
    lines = run_benchmark("pool_storage.py", "--draws", "2", "--pool_share", "0.02")
    summary = re.fullmatch(r"pool_storage: disk/memory ms per batch = ([\d.]+) \(32x32\), ([\d.]+) \(224x224\)",
                           lines[-1])
    assert summary, lines[-1]
    rows = [line.split("|") for line in lines if line.startswith(("digits", "ImageNet"))]
    assert [int(r[2]) for r in rows] == [1000, 100]          # 2% of 50,000 and of 4,000 (at least one batch)
    for row, ratio in zip(rows, summary.groups()):
        memory, disk = float(row[4]), float(row[5])
        assert memory > 0 and disk > 0 and abs(disk / memory - float(ratio)) < 0.01 + 0.01 * float(ratio)
