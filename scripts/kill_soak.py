"""Kill a short seeded digits run again and again, resume it each time, and check that it ends
exactly like an uninterrupted run of the same job.

    python scripts/kill_soak.py            # 20 kills (a quarter of them SIGTERM) of a 10-epoch job
    python scripts/kill_soak.py --tiny     # 2 kills (a SIGTERM, a SIGKILL) of a 4-epoch job: the CI test

The job is datafree_kd.py --method fast_meta on the offline digits data with tiny networks
(resnet8 teacher and student; the teacher's weights are random unless --teacher_ckpt is
given: the check is about the run's state, not its accuracy), one thread per process.
First the job runs once without interruption (the reference); then it runs again in another
folder and is killed at ``--kills`` random moments: most during training (a moment drawn
uniformly over one epoch after the process starts training, or after it finished
``--after_epochs`` epochs), some during start-up (``--startup_share``). ``--sigterm_share`` of the kills send SIGTERM, which the run answers by
finishing its current step, writing last.pth and exiting with status 143; the others send
SIGKILL. After each kill the job is started again, with --resume once last.pth exists.

At the end it compares the final student, generator, pool and the per-epoch metrics of
summary.json with the reference's, bit for bit. "Lost epochs" of a kill is an upper bound of
the work it cost: the epochs the killed process had finished (its [Eval] lines) plus the one
it was in, minus the progress last.pth holds after the kill (epochs, plus the share of an
epoch a SIGTERM save records); a SIGTERM answered with a save loses nothing. It exceeds 1
only if a finished epoch was not saved. The last line is

    kill_soak: N kills, M resumed, identical=<yes|no>, lost epochs max=<k>

and the exit status is 0 when every kill was resumed, the end is identical and no kill lost
more than one epoch. The run folders stay in --workdir (default: a new temporary folder).
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from datafree import registry  # noqa: E402
from datafree.checkpoint import atomic_save, load_checkpoint, read_summary  # noqa: E402
from datafree.pool import read_pool  # noqa: E402

JOB = ["--method", "fast_meta", "--dataset", "digits", "--teacher", "resnet8", "--student", "resnet8", "--gpu", "-1",
       "--lr", "0.05", "--T", "4", "--bn", "1", "--oh", "1", "--adv", "1", "--bn_mmt", "0.9", "--lr_g", "1e-3",
       "--lr_z", "0.01", "--is_maml", "1", "--warmup", "1", "--seed", "3", "--precision", "fp32"]
SIZES = {  # epochs, flags that set the work per epoch
    "default": (10, ["--batch_size", "32", "--synthesis_batch_size", "16", "--kd_steps", "5", "--ep_steps", "10",
                     "--g_steps", "2"]),
    "tiny": (4, ["--batch_size", "16", "--synthesis_batch_size", "8", "--kd_steps", "3", "--ep_steps", "6",
                 "--g_steps", "1"]),
}
TRAINING_STARTS = "synthetic pool:"   # the log line printed just before the epoch loop starts
WAIT_AFTER_SIGNAL = 300               # seconds a signalled process may take to exit


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=None, help="kills (default: 20; 2 with --tiny)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the job (default: 10; 4 with --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="a small job and 2 kills, each one epoch into its attempt's training (CI)")
    parser.add_argument("--after_epochs", type=int, default=None,
                        help="kill only after the attempt finished this many epochs (default: 0; 1 with --tiny)")
    parser.add_argument("--sigterm_share", type=float, default=0.25, help="share of the kills that send SIGTERM")
    parser.add_argument("--startup_share", type=float, default=None,
                        help="share of the kills made during start-up (default: 0.15; 0 with --tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and signals")
    parser.add_argument("--teacher_ckpt", default=None, help="a digits resnet8 teacher (default: random weights)")
    parser.add_argument("--workdir", default=None, help="folder for the runs (default: a new temporary folder)")
    return parser


class Attempt:
    """One process of the job, its output lines time-stamped as they arrive."""

    def __init__(self, argv, cwd, log_path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ROOT}
        self.launched = time.time()
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "datafree_kd.py"), *argv], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.training_started = None
        self.epoch_ends = []          # arrival times of the [Eval] lines (one per finished epoch)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if self.training_started is None and TRAINING_STARTS in line:
                self.training_started = time.time()
            if "[Eval] epoch=" in line:
                self.epoch_ends.append(time.time())

    def wait(self, timeout=None):
        code = self.proc.wait(timeout)
        self._reader.join()
        self.log.close()
        return code

    def wait_for_epochs(self, count, timeout):
        """Whether the process finished ``count`` epochs (False: it ended or the wait timed out)."""
        deadline = time.time() + timeout
        while len(self.epoch_ends) < count and self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        return len(self.epoch_ends) >= count

    def wait_for_training(self, timeout):
        """Seconds until the process started training (None: it ended or the wait timed out)."""
        deadline = time.time() + timeout
        while self.training_started is None and self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        return None if self.training_started is None else self.training_started - self.launched


def make_teacher(path, seed=0):
    torch.manual_seed(seed)
    atomic_save({"state_dict": registry.get_model("resnet8", 10).state_dict(), "arch": "resnet8"}, path)


def final_state(run_dir):
    """What must match: the student, the generator, the pool and the per-epoch metrics."""
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pth"))
    summary = read_summary(run_dir) or {}
    metrics = [(h["epoch"], h["acc1"]) for h in summary.get("history", [])]
    return {"epoch": ckpt["epoch"], "best_acc1": ckpt["best_acc1"], "student": ckpt["state_dict"],
            "generator": ckpt["synthesizer"]["generator"], "pool": read_pool(ckpt["synthesizer"]["pool"], run_dir),
            "metrics": metrics}


def differences(got, want):
    """The names of the parts of ``got`` that are not bit-identical to ``want``."""
    out = []
    for key in ("epoch", "best_acc1", "metrics"):
        if got[key] != want[key]:
            out.append(f"{key}: {got[key]} vs {want[key]}")
    for key in ("student", "generator"):
        bad = [k for k in want[key] if k not in got[key] or not torch.equal(got[key][k], want[key][k])]
        if bad:
            out.append(f"{key}: {len(bad)} tensors differ, e.g. {bad[0]}")
    if got["pool"].shape != want["pool"].shape or not torch.equal(got["pool"], want["pool"]):
        out.append(f"pool: {tuple(got['pool'].shape)} vs {tuple(want['pool'].shape)} images differ")
    return out


def saved_progress(run_dir):
    """The epochs last.pth holds, with the share of an epoch a save made mid-epoch records (0: none)."""
    path = os.path.join(run_dir, "last.pth")
    if not os.path.isfile(path):
        return 0.0
    ckpt = load_checkpoint(path)
    progress = ckpt.get("progress")
    if not progress:
        return float(ckpt["epoch"])
    kd_steps, ep_steps = ckpt["args"]["kd_steps"], ckpt["args"]["ep_steps"]
    rounds = ep_steps // kd_steps
    return ckpt["epoch"] + (progress["round"] + progress["kd_done"] / kd_steps) / rounds


def launch(job, workdir, run_dir, number):
    """Attempt ``number`` of the killed run: the job, with --resume once last.pth exists."""
    resume = ["--resume"] if os.path.isfile(os.path.join(run_dir, "last.pth")) else []
    return Attempt([*job, "--output", os.path.basename(run_dir), *resume], workdir,
                   os.path.join(workdir, f"attempt{number}.log"))


def wait_for_the_moment(attempt, rng, startup, after_epochs, epoch_seconds):
    """Wait until the moment of the kill: a random moment of the start-up (``startup``: its
    length) or of the epoch after training started (and ``after_epochs`` epochs finished).
    Returns None when the process is still running then, else its exit status."""
    if startup is not None:
        time.sleep(rng.uniform(0, startup))
    elif attempt.wait_for_training(timeout=600) is None or not attempt.wait_for_epochs(after_epochs, timeout=600):
        return attempt.wait()
    else:
        time.sleep(rng.uniform(0, epoch_seconds))
    return None if attempt.proc.poll() is None else attempt.wait()


def lost_work(attempt, run_dir, start, killed_at, signum, code, epochs, epoch_seconds, failures, number):
    """The upper bound of the epochs a kill cost (see the module's docstring); prints the kill's line."""
    saved = saved_progress(run_dir)
    last = os.path.join(run_dir, "last.pth")
    saved_at = os.path.getmtime(last) if os.path.isfile(last) else 0.0
    started = attempt.training_started
    finished = int(start) + sum(t < killed_at for t in attempt.epoch_ends)
    if started is None or started > killed_at:
        lost = 0.0                                    # killed before training: no work lost
    elif signum == signal.SIGTERM and code == 143 and saved_at >= killed_at:
        lost = max(0.0, finished - saved)             # it saved where it stopped
    else:                                             # the epoch it was in, and any finished one not saved
        lost = min(max(finished, int(saved)) + 1, epochs) - saved
    if saved < finished:
        failures.append(f"kill {number}: last.pth holds {saved:.2f} epochs but the process had finished {finished}")
    since_save = killed_at - max(started or killed_at, saved_at if saved_at > attempt.launched else 0.0)
    print(f"kill_soak: kill {number}: {signum.name} {'during start-up' if started is None else 'in training'}, exit "
          f"{code}, last.pth holds {saved:.2f} epochs (had finished {finished}), lost at most {lost:.2f} epochs "
          f"({max(since_save, 0.0) / epoch_seconds:.2f} epochs of time since the last save)", flush=True)
    return lost


def main(argv=None):
    args = build_parser().parse_args(argv)
    size = "tiny" if args.tiny else "default"
    epochs, work = SIZES[size]
    epochs = args.epochs or epochs
    kills = args.kills if args.kills is not None else (2 if args.tiny else 20)
    startup_share = args.startup_share if args.startup_share is not None else (0.0 if args.tiny else 0.15)
    after_epochs = args.after_epochs if args.after_epochs is not None else (1 if args.tiny else 0)
    workdir = args.workdir or tempfile.mkdtemp(prefix="kill_soak-")
    os.makedirs(workdir, exist_ok=True)
    teacher = args.teacher_ckpt or os.path.join(workdir, "teacher.pth")
    if not args.teacher_ckpt:
        make_teacher(teacher)
    job = [*JOB, *work, "--epochs", str(epochs), "--teacher_ckpt", os.path.abspath(teacher)]
    rng = random.Random(args.seed)
    n_term = min(kills, max(1 if args.sigterm_share > 0 else 0, round(kills * args.sigterm_share)))
    signals = [signal.SIGTERM] * n_term + [signal.SIGKILL] * (kills - n_term)
    rng.shuffle(signals)
    soak_start = time.time()

    print(f"kill_soak: reference run of {epochs} epochs in {workdir}", flush=True)
    reference = Attempt([*job, "--output", "reference"], workdir, os.path.join(workdir, "reference.log"))
    startup = reference.wait_for_training(timeout=600) or 0.0
    if reference.wait() != 0:
        print(f"kill_soak: the reference run failed, see {workdir}/reference.log")
        return 1
    history = read_summary(os.path.join(workdir, "reference"))["history"]
    walls = [h["wall_seconds"] for h in history]
    epoch_seconds = (walls[-1] - walls[0]) / max(len(walls) - 1, 1) if len(walls) > 1 else walls[0]
    print(f"kill_soak: reference took {time.time() - soak_start:.1f} s (start-up {startup:.1f} s, "
          f"{epoch_seconds:.2f} s per epoch)", flush=True)

    run_dir = os.path.join(workdir, "killed")
    done, resumed, lost_max, failures = 0, 0, 0.0, []
    for number, signum in enumerate(signals, 1):
        start = saved_progress(run_dir)
        attempt = launch(job, workdir, run_dir, number)
        ended = wait_for_the_moment(attempt, rng, startup if rng.random() < startup_share else None, after_epochs,
                                    epoch_seconds)
        if ended is not None:            # it ended before the kill came
            resumed += number > 1 and ended == 0
            if ended != 0:
                failures.append(f"attempt {number} exited with status {ended}, see attempt{number}.log")
            else:
                print(f"kill_soak: the job finished after {done} kills; use more --epochs for more kills")
            break
        resumed += number > 1            # the attempt after the previous kill ran until this one
        killed_at = time.time()
        attempt.proc.send_signal(signum)
        try:
            code = attempt.wait(WAIT_AFTER_SIGNAL)
        except subprocess.TimeoutExpired:
            attempt.proc.kill()
            code = attempt.wait()
            failures.append(f"attempt {number} did not exit within {WAIT_AFTER_SIGNAL} s of {signum.name}")
        done += 1
        expected = {signal.SIGKILL: {-signal.SIGKILL}, signal.SIGTERM: {143}}[signum]
        if signum == signal.SIGTERM and attempt.training_started is None:
            expected = {143, -signal.SIGTERM}     # before its handler was set, SIGTERM ends a process at once
        if code not in expected:
            failures.append(f"attempt {number} ({signum.name}) exited with status {code}, not {sorted(expected)}")
        lost = lost_work(attempt, run_dir, start, killed_at, signum, code, epochs, epoch_seconds, failures, number)
        lost_max = max(lost_max, lost)
        if failures:
            break
    else:
        final = launch(job, workdir, run_dir, len(signals) + 1)
        code = final.wait()
        resumed += code == 0 and done > 0
        if code != 0:
            failures.append(f"the last attempt exited with status {code}, see attempt{len(signals) + 1}.log")
    identical = False
    if not failures and done:
        diff = differences(final_state(run_dir), final_state(os.path.join(workdir, "reference")))
        leftovers = [os.path.join(dirpath, f) for dirpath, _, files in os.walk(run_dir) for f in files if ".tmp" in f]
        identical = not diff
        for line in diff:
            print(f"kill_soak: differs from the reference: {line}")
        if leftovers:
            failures.append(f"temporary files left: {leftovers}")
    for failure in failures:
        print(f"kill_soak: FAILED: {failure}")
    print(f"kill_soak: total {time.time() - soak_start:.1f} s; runs in {workdir}")
    print(f"kill_soak: {done} kills, {resumed} resumed, identical={'yes' if identical else 'no'}, "
          f"lost epochs max={lost_max:.2f}")
    ok = identical and not failures and resumed == done == kills and lost_max <= 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
