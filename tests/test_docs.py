"""Every shell command of README.md and docs/*.md works: the docs cannot rot.

The commands are read from the Markdown's fenced ``bash``/``sh`` blocks (continuation lines
joined, comments dropped, ``&&``, ``;``, ``|`` and a trailing ``&`` splitting a line into commands,
``NAME=value`` prefixes taken as environment). Each one is checked by the rule for its program:

- ``python datafree_kd.py | train_scratch.py | vanilla_kd.py ...``: parsed by the script's own
  parser (flags, ``--config`` file, flag checks); when its dataset is offline (digits, shapes) it
  is also run, in a sandbox copy of the repository, with ``TINY[script]`` appended (a later flag
  wins over an earlier one and over the config file), on the CPU. Teacher files an earlier
  documented command would have made are random-weight stand-ins.
- ``bash scripts/demo_*.sh``: run in the sandbox with ``TINY['datafree_kd.py']`` appended (the
  demos pass extra flags to their distillation runs), teachers as stand-ins.
- ``bash scripts/OTHER.sh``: run with ``python`` and ``torchrun`` replaced by a recorder on PATH;
  every command it would have started is then checked as above. They need a GPU, CIFAR, ImageNet
  or NYUv2, so their commands are parsed, not run.
- ``torchrun [options] SCRIPT ...``: checked as ``python SCRIPT ...``, parsed only (several
  processes on GPUs).
- ``python scripts/reproduce_table.py SPEC ...``: with ``--print_commands`` into an empty
  ``--root``, and every cell command it prints is parsed; ``--collect_only`` runs as written.
- ``python examples/NAME.py``: run with ``TINY['examples/NAME.py']``.
- ``pip install -r FILE ...``: the files exist and every requirement is installed;
  ``pip install -e .``: pyproject.toml names modules and packages that exist.
- ``python -m pytest ...``: collected with ``--collect-only`` (running it is running this suite).
- ``python scripts/compare_runs.py SUBCOMMAND ...``: the subcommand and every flag are in its ``--help``
  (it runs whole trainings).
- ``git worktree | diff | apply``: only these; the files a ``git diff ... -- FILES`` names exist.
- Commands whose full run another test does (``COVERED_ELSEWHERE``): ``--help`` for a Python
  script, ``bash -n`` for a shell script.

A command no rule knows fails the test: add a rule here when you document a new kind of command.
"""
import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

ENTRY_SCRIPTS = ("datafree_kd.py", "train_scratch.py", "vanilla_kd.py", "scripts/make_init_pool.py")
OFFLINE_DATASETS = ("digits", "shapes")
TINY = {
    "datafree_kd.py": ["--epochs", "1", "--warmup", "0", "--ep_steps", "1", "--kd_steps", "1", "--batch_size", "8",
                       "--synthesis_batch_size", "8", "--gpu", "-1"],
    "train_scratch.py": ["--epochs", "1", "--gpu", "-1"],
    "vanilla_kd.py": ["--epochs", "1", "--gpu", "-1"],
    "examples/own_teacher.py": ["--teacher_epochs", "1", "--epochs", "1"],
}
# Commands run in full by another test (tiny settings there); here: --help or bash -n.
COVERED_ELSEWHERE = {
    "scripts/gpu_check.sh": "tests/test_speed.py runs it with --cpu",
    "scripts/kill_soak.py": "tests/test_faults.py runs it with --tiny",
    "scripts/plot_run.py": "tests/test_datafree_kd.py draws a run with it",
    "benchmarks/epoch_cost.py": "a benchmark (minutes); tests/test_speed.py runs it tiny",
    "benchmarks/pool_scale.py": "a benchmark (minutes); tests/test_benchmarks.py runs it tiny",
    "benchmarks/pool_storage.py": "a benchmark of GPU memory against disk; tests/test_benchmarks.py runs it tiny",
    "benchmarks/init_pool_cost.py": "a benchmark of 224x224 DeepInversion steps (a GPU)",
    "benchmarks/side_by_side.py": "needs the original release checked out; tests/test_side_by_side.py runs it "
                                  "with stand-ins for both sides",
    "benchmarks/generative_probe.py": "needs the original release checked out; tests/test_side_by_side.py checks its "
                                      "flags and refusals, and runs it where FAST_DATAFREE_UPSTREAM names a checkout",
    "benchmarks/nayer_side_by_side.py": "needs NAYER's code checked out; tests/test_nayer_side_by_side.py runs it "
                                        "on a tiny budget",
}
SHELL_FENCES = ("bash", "sh", "shell")
SUBPROCESS_TIMEOUT = 600


def doc_files():
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def fenced_lines(path):
    """(line number, shell line) of the shell blocks of ``path``, continuation lines joined."""
    lines, inside, pending, start = [], False, "", 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                inside = not inside and stripped[3:].strip() in SHELL_FENCES
                continue
            if not inside:
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            lines.append((start, pending + stripped))
            pending = ""
    return lines


def split_commands(line):
    """The commands of one shell line: (environment, argv) pairs."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in list(lexer) + [";"]:
        if token in ("&&", ";", "&", "||", "|"):
            if current:
                env = {}
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    name, value = current.pop(0).split("=", 1)
                    env[name] = value
                if current:
                    commands.append((env, current))
            current = []
        else:
            current.append(token)
    return commands


def documented_commands():
    """Every documented command once (the first place it appears names it)."""
    found = {}
    for path in doc_files():
        for number, line in fenced_lines(path):
            for env, argv in split_commands(line):
                where = f"{os.path.relpath(path, ROOT)}:{number}"
                key = json.dumps([env, argv])
                found.setdefault(key, pytest.param(env, argv, id=f"{where}:{shlex.join(argv)[:70]}"))
    return list(found.values())


def import_script(relpath):
    name = "doc_" + re.sub(r"\W", "_", relpath)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def parse_entry(script, argv, cwd):
    """The namespace the entry script's own parser (and flag checks) makes of ``argv``, run from ``cwd``."""
    module = import_script(script)
    before = os.getcwd()
    os.chdir(cwd)
    try:
        if script == "datafree_kd.py":
            return module.parse_args(argv)
        if script == "scripts/make_init_pool.py":
            return module.parse(argv)[1]
        return module.build_parser().parse_args(argv)
    finally:
        os.chdir(before)


class Sandbox:
    """A folder that looks like the repository (its files linked) with its own checkpoints/, run
    folders and PATH, so that documented commands run as a user would run them from a checkout."""

    SKIP = {".git", "checkpoints", "runs", "run", "data", ".pytest_cache", "__pycache__"}

    def __init__(self, root):
        self.root = str(root)
        for name in os.listdir(ROOT):
            if name not in self.SKIP:
                os.symlink(os.path.join(ROOT, name), os.path.join(self.root, name))
        os.makedirs(os.path.join(self.root, "checkpoints", "pretrained"))
        self.bin = os.path.join(self.root, "bin.recorder")
        self.record = os.path.join(self.root, "recorded.jsonl")

    def env(self, extra=None, recorder=False):
        env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **(extra or {})}
        if recorder:
            env["PATH"] = self.bin + os.pathsep + env["PATH"]
        return env

    def run(self, argv, env=None, recorder=False):
        proc = subprocess.run(argv, cwd=self.root, env=self.env(env, recorder), capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT)
        assert proc.returncode == 0, f"{shlex.join(argv)} failed ({proc.returncode}):\n" \
                                     f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def stand_in_teacher(self, dataset, model, path=None):
        """A random-weight teacher where a documented earlier step would have written one."""
        import registry
        from datafree.checkpoint import atomic_save

        path = os.path.join(self.root, path or os.path.join("checkpoints", "pretrained", f"{dataset}_{model}.pth"))
        if not os.path.exists(path):
            num_classes = registry.DATASET_NUM_CLASSES[dataset]
            net = registry.get_model(model, num_classes, task=registry.get_task(dataset))
            atomic_save({"state_dict": net.state_dict()}, path)

    def install_recorder(self):
        os.makedirs(self.bin, exist_ok=True)
        for program in ("python", "torchrun"):
            path = os.path.join(self.bin, program)
            with open(path, "w") as f:
                f.write(f"#!{sys.executable}\nimport json, os, sys\n"
                        f"with open({self.record!r}, 'a') as f:\n"
                        f"    f.write(json.dumps([{program!r}, *sys.argv[1:]]) + '\\n')\n")
            os.chmod(path, 0o755)

    def recorded(self):
        if not os.path.exists(self.record):
            return []
        with open(self.record) as f:
            return [json.loads(line) for line in f]


def check_python(sandbox, env, argv, parse_only=False):
    """``python ARGV...`` (argv without the interpreter) by the rules of the module docstring."""
    if argv[0] == "-m" and argv[1] == "datafree.label_embedding":
        sandbox.run([sys.executable, *argv], env)     # seconds, offline with --source hash
        return
    if argv[0] == "-m":
        assert argv[1:3] == ["pytest", "-q"] or argv[1] == "pytest", f"no rule for python -m {argv[1]}"
        sandbox.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], env)
        return
    script, rest = os.path.normpath(argv[0]), argv[1:]
    assert os.path.isfile(os.path.join(ROOT, script)), f"{script} does not exist"
    if script in COVERED_ELSEWHERE:
        assert "usage:" in sandbox.run([sys.executable, script, "--help"], env)
    elif script in ENTRY_SCRIPTS:
        args = parse_entry(script, rest, sandbox.root)
        if parse_only or script not in TINY or args.dataset not in OFFLINE_DATASETS:
            return
        if getattr(args, "teacher", None) and not getattr(args, "evaluate_only", False):
            sandbox.stand_in_teacher(args.dataset, args.teacher, getattr(args, "teacher_ckpt", None))
        if getattr(args, "evaluate_only", False):
            sandbox.stand_in_teacher(args.dataset, args.model, args.resume)
        sandbox.run([sys.executable, script, *rest, *TINY[script]], env)
    elif script == "scripts/reproduce_table.py":
        root = os.path.join(sandbox.root, "tables")
        if "--collect_only" in rest:
            sandbox.run([sys.executable, script, *rest, "--root", root], env)
            return
        printed = sandbox.run([sys.executable, script, *rest, "--print_commands", "--root", root], env)
        cells = [shlex.split(line) for line in printed.splitlines() if line.startswith("python ")]
        assert cells, f"{shlex.join(argv)} --print_commands printed no cell"
        for cell in cells:
            check_python(sandbox, env, cell[1:], parse_only=True)
    elif script.startswith("examples/"):
        sandbox.run([sys.executable, script, *rest, *TINY[script]], env)
    elif script == "scripts/compare_runs.py":     # runs whole trainings: its subcommand and flags exist
        usage = sandbox.run([sys.executable, script, rest[0], "--help"], env)
        for flag in (token for token in rest if token.startswith("--")):
            whole_flag = rf"(?<![\w-]){re.escape(flag)}(?![\w-])"     # --out must not pass as a part of --output
            assert re.search(whole_flag, usage), f"compare_runs.py {rest[0]} has no {flag}"
    else:
        raise AssertionError(f"no rule checks 'python {script}'; add one to tests/test_docs.py")


def check_torchrun(sandbox, env, argv):
    """``torchrun [options] SCRIPT ...``: the script's own command, parsed."""
    at = next(i for i, token in enumerate(argv) if token.endswith(".py"))
    check_python(sandbox, env, argv[at:], parse_only=True)


def check_bash(sandbox, env, argv):
    script, rest = os.path.normpath(argv[0]), argv[1:]
    assert os.path.isfile(os.path.join(ROOT, script)), f"{script} does not exist"
    if script in COVERED_ELSEWHERE:
        sandbox.run(["bash", "-n", script], env)
    elif os.path.basename(script).startswith("demo_"):
        with open(os.path.join(ROOT, script)) as f:
            for dataset, model in re.findall(r"^ensure_teacher (\S+) (\S+)", f.read(), re.M):
                sandbox.stand_in_teacher(dataset, model)
        sandbox.run(["bash", script, *rest, *TINY["datafree_kd.py"]], env)
    else:
        sandbox.install_recorder()
        sandbox.run(["bash", script, *rest], env, recorder=True)
        started = sandbox.recorded()
        assert started, f"{script} started no command"
        for command in started:
            if command[0] == "torchrun":
                check_torchrun(sandbox, env, command[1:])
            else:
                check_python(sandbox, env, command[1:], parse_only=True)


def check_pip(argv):
    from importlib.metadata import PackageNotFoundError, version

    assert argv[0] == "install", f"no rule for pip {argv[0]}"
    extras = re.fullmatch(r"\.\[([\w,-]+)\]", argv[-1]) if argv[1:-1] in ([], ["-e"]) else None
    if argv[1:] in (["-e", "."], ["."]) or extras:
        import tomllib
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)
        # only the datafree package is installed, and every console command names a function of it
        assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["datafree*"]
        assert "py-modules" not in project["tool"]["setuptools"]
        for command, target in project["project"]["scripts"].items():
            module, function = target.split(":")
            assert module.startswith("datafree."), command
            with open(os.path.join(ROOT, *module.split(".")) + ".py") as f:
                assert f"def {function}(" in f.read(), target
        for extra in extras.group(1).split(",") if extras else []:   # .[NAME]: declared, and installed here
            declared = project["project"]["optional-dependencies"]
            assert extra in declared, f"pyproject.toml declares no extra '{extra}'"
            for requirement in declared[extra]:
                try:
                    version(re.split(r"[<>=!~\[; ]", requirement)[0])
                except PackageNotFoundError:
                    pytest.fail(f"the extra '{extra}' requires {requirement}, which is not installed")
        return
    files = [argv[i + 1] for i, token in enumerate(argv) if token == "-r"]
    assert files and len(files) * 2 == len(argv) - 1, f"no rule for pip {shlex.join(argv)}"
    for name in files:
        with open(os.path.join(ROOT, name)) as f:
            for line in f:
                requirement = line.split("#")[0].strip()
                if requirement:
                    package = re.split(r"[<>=!~\[; ]", requirement)[0]
                    try:
                        version(package)
                    except PackageNotFoundError:
                        pytest.fail(f"{name} requires {requirement}, which is not installed")


def check_git(argv):
    """The documented git commands: a worktree, a diff of named project files, and applying it."""
    if argv[:1] == ["-C"]:
        argv = argv[2:]
    assert argv and argv[0] in ("worktree", "diff", "apply"), f"no rule for git {shlex.join(argv)}"
    if argv[0] == "diff" and "--" in argv:
        for path in argv[argv.index("--") + 1:]:
            assert os.path.exists(os.path.join(ROOT, path)), f"git diff names {path}, which the project lacks"


def check_apt(argv):
    """A documented package install is one that .ci/run installs too (so CI has what the docs need)."""
    packages = [a for a in argv[1:] if not a.startswith("-")]
    assert argv[0] == "install" and packages, f"no rule for apt-get {shlex.join(argv)}"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    for package in packages:
        assert f"apt-get install -y {package}" in ci, f".ci/run does not install {package}"


@pytest.mark.parametrize("env,argv", documented_commands())
def test_documented_command(env, argv, tmp_path):
    sandbox = Sandbox(tmp_path)
    program, rest = argv[0], argv[1:]
    if program == "python":
        check_python(sandbox, env, rest)
    elif program == "bash":
        check_bash(sandbox, env, rest)
    elif program == "torchrun":
        check_torchrun(sandbox, env, rest)
    elif program == "pip":
        check_pip(rest)
    elif program == "apt-get":
        check_apt(rest)
    elif program == "git":
        check_git(rest)
    elif program == "wait":
        assert not rest
    else:
        pytest.fail(f"no rule checks '{program}' commands; add one to tests/test_docs.py")


def test_commands_are_found_and_split():
    commands = [tuple(p.values) for p in documented_commands()]
    argvs = [argv for _, argv in commands]
    assert ["bash", "scripts/demo_digits.sh"] in argvs
    assert ["python", "-m", "pytest", "-q"] in argvs
    assert len(commands) > 30
    env, argv = split_commands("OMP_NUM_THREADS=1 python a.py --rows A B &  # comment")[0]
    assert env == {"OMP_NUM_THREADS": "1"} and argv == ["python", "a.py", "--rows", "A", "B"]
    assert [a for _, a in split_commands("wait; python b.py")] == [["wait"], ["python", "b.py"]]
    assert [a for _, a in split_commands("git diff -- a | git apply")] == [["git", "diff", "--", "a"], ["git", "apply"]]


def test_readme_is_short_and_keeps_the_ci_commands():
    """The README stays a five-minute read, and .ci/run runs exactly its test command."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert readme.count("\n") <= 150
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_command = f.read().strip().splitlines()[-1]
    assert ci_command in readme


def test_readme_python_snippet_is_the_example():
    """The README's Python block is an excerpt of examples/own_teacher.py, line for line."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    with open(os.path.join(ROOT, "examples", "own_teacher.py")) as f:
        example = [line.strip() for line in f]
    assert blocks
    for line in blocks[0].strip().splitlines():
        assert line.strip() in example, line


def test_docs_links_point_to_files():
    for path in doc_files():
        with open(path) as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith("http"):
                assert os.path.exists(os.path.join(os.path.dirname(path), target)), f"{path}: {target}"
