"""Run a whole paper table and collect it: one command from run folders to Table 1 (``datafree-table``).

    python scripts/reproduce_table.py configs/tables/digits_mini.yaml      # run what is missing, then collect
    python scripts/reproduce_table.py configs/tables/table1_cifar10.yaml --print_commands   # for a cluster
    python scripts/reproduce_table.py configs/tables/table1_cifar10.yaml --collect_only

The cells run from the spec's project folder (the checkout holding its configs/, or the current folder).

Every (row, teacher/student pair, seed) of the spec is a cell with its own run folder under
--root (default runs/tables/<name>). Finished cells are skipped; a cell that was interrupted is
continued with --resume, so stopping the runner (Ctrl-C, a killed job) and starting it again
finishes the table without redoing finished work. A cell whose script fails is marked failed
(runner.json, runner.log in its folder) and the runner goes on with the others; the table shows
it as failed. The table is written to ROOT/table.md and table.csv with three plots
(accuracy_vs_hours.png, accuracy_per_epoch.png, accuracy_vs_wall.png).
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

from datafree.tables import cell_status, load_spec, write_runner, write_table
from datafree.utils.cli import run_cli


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="table spec (YAML), e.g. configs/tables/digits_mini.yaml")
    parser.add_argument("--root", default=None, help="folder of the cells' runs (default: runs/tables/<name>)")
    parser.add_argument("--print_commands", action="store_true",
                        help="print the command of every unfinished cell and exit (launch them yourself, "
                             "then use --collect_only)")
    parser.add_argument("--collect_only", action="store_true", help="run nothing; write the table from the run folders")
    parser.add_argument("--rows", nargs="+", default=None, metavar="NAME",
                        help="only run these rows, by name or folder, any case (the table still lists every row)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the cells (default: this one)")
    return parser


def run_cell(spec, cell, python):
    """Run (or resume) one cell; return True when it finished."""
    resume = os.path.isfile(os.path.join(cell.folder, "last.pth"))
    cmd = spec.command(cell, python=python, resume=resume)
    os.makedirs(cell.folder, exist_ok=True)
    print(f"[run] {cell.row.name} {cell.pair} seed {cell.seed}{' (resuming)' if resume else ''}:\n  {shlex.join(cmd)}",
          flush=True)
    write_runner(cell.folder, status="running", command=cmd, started=time.time())
    tic = time.perf_counter()
    with open(os.path.join(cell.folder, "runner.log"), "a") as log:
        code = subprocess.run(cmd, cwd=spec.project, stdout=log, stderr=subprocess.STDOUT).returncode
    status = cell_status(cell)[0] if code == 0 else "failed"
    status = "done" if status == "done" else "failed"   # exit 0 before the last epoch is a failure too
    seconds = time.perf_counter() - tic
    write_runner(cell.folder, status=status, command=cmd, returncode=code, seconds=seconds)
    if status == "done":
        print(f"[done] {cell.row.name} {cell.pair} seed {cell.seed} in {seconds:.0f} s", flush=True)
    else:
        print(f"[failed] {cell.row.name} {cell.pair} seed {cell.seed}: exit code {code}; "
              f"see {os.path.join(cell.folder, 'runner.log')}", flush=True)
    return status == "done"


def main(argv=None):
    args = build_parser().parse_args(argv)
    root = os.path.abspath(args.root) if args.root else None
    spec = load_spec(os.path.abspath(args.spec), root)
    os.chdir(spec.project)
    if args.rows:
        args.rows = spec.rows_named(args.rows)
    failed = 0
    if not args.collect_only:
        for cell in spec.cells():
            if args.rows and cell.row.name not in args.rows:
                continue
            status, _ = cell_status(cell)
            if status == "done":
                print(f"[skip] {cell.row.name} {cell.pair} seed {cell.seed}: finished", flush=True)
                continue
            if args.print_commands:
                resume = os.path.isfile(os.path.join(cell.folder, "last.pth"))
                print(shlex.join(spec.command(cell, python="python", resume=resume)))
                continue
            failed += not run_cell(spec, cell, args.python)
    if args.print_commands:
        return 0
    text, paths = write_table(spec)
    print(text)
    print("wrote " + ", ".join(paths))
    if failed:
        print(f"{failed} cell(s) failed; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def cli():
    """The console command (and scripts/reproduce_table.py in a checkout)."""
    sys.exit(run_cli(main, sys.argv[1:]))


if __name__ == "__main__":
    cli()
