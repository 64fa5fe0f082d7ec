"""``datafree.distill``: data-free distillation of your own classifier from Python.

No registry entry, dataset or flag file is needed: the teacher and the student are any
``nn.Module`` classifiers (``model(x)`` returns logits), and the run is described by the input
shape, the normalisation and the class count. The run itself is datafree_kd.py's: the same
``datafree.run.build_run``, synthesizers and epoch loop (``datafree.engine.fit`` over a ``DataFreeJob``), the same
flags, checked the same way (a setting is a flag's name without ``--``).
"""
import contextlib
import os
import tempfile

import torch

from datafree.errors import UsageError

# Flags that name what distill() is given directly (the models, the data, the run folder, the device).
GIVEN_DIRECTLY = {"method": "the method argument", "dataset": "input_shape, mean, std and num_classes",
                  "teacher": "the teacher module", "student": "the student module",
                  "teacher_ckpt": "the teacher module", "data_root": "val_data", "download": "val_data",
                  "output": "output", "resume": "nothing (distill starts afresh)",
                  "evaluate_only": "nothing (evaluate the returned student)", "start_epoch": "nothing",
                  "gpu": "device", "config": "config", "workers": "val_data (a DataLoader)"}


def distill(teacher, student, method="fast_meta", *, input_shape, mean, std, num_classes, epochs=None,
            val_data=None, config=None, output=None, device=None, **settings):
    """Distil ``teacher`` into ``student`` from synthetic images only; return ``(student, summary)``.

    teacher, student: ``nn.Module`` classifiers taking normalised images of ``input_shape``
        (C, H, W) and returning ``num_classes`` logits; the BN-statistics term (``bn``) needs
        BatchNorm2d layers in the teacher. Both are moved to ``device``; the teacher is only read.
    method: a ``datafree_kd.py --method`` (fast_meta, fast, deepinv, ssd, noise, ...; dafl, zskt,
        dfq and dfad also need ``teacher(x, return_features=True)``).
    mean, std: the per-channel normalisation the teacher was trained with.
    epochs: epochs of ``ep_steps`` KD steps (default: datafree_kd.py's).
    val_data: a Dataset or DataLoader of (normalised image, label) to measure the student on each
        epoch; without it the measure is the student's top-1 agreement with the teacher on
        synthetic batches (no real data needed).
    config: a YAML preset (path) or dict of flag values, as ``--config``; ``settings`` override it.
    output: a run folder to keep (log, TensorBoard, summary.json, synthetic.png, last/best.pth);
        by default a temporary one, removed at the end.
    device: a torch.device or its name (default: the first GPU if any, else the CPU).
    settings: any other datafree_kd.py flag by its name without ``--`` (g_steps=5, bn=10.0, lr=0.1,
        batch_size=128, kd_steps=20, ep_steps=20, T=20, seed=0, precision="bf16", ...).

    summary: ``best_acc1`` and ``acc1`` (last epoch) of the measure named in ``metric``,
    ``history`` (one dict per epoch: acc1, kd_loss, synthesis loss terms, seconds),
    ``synthesis_seconds``, ``kd_seconds``, ``wall_seconds``, ``epochs``, ``method``, ``output``
    (None when the folder was temporary). The returned student is the one after the last epoch,
    in eval mode.
    """
    from datafree.commands import kd as datafree_kd   # its flags and their checks
    from datafree.utils.cli import config_values, read_config

    given = sorted(key for key in settings if key in GIVEN_DIRECTLY)
    if given:
        raise UsageError("; ".join(f"distill() takes '{key}' as {GIVEN_DIRECTLY[key]}, not as a setting"
                                   for key in given))
    parser = datafree_kd.build_parser()
    if config is not None:
        values = (read_config(parser, os.fspath(config)) if isinstance(config, (str, os.PathLike))
                  else config_values(parser, dict(config), "config"))
        parser.set_defaults(**{k: v for k, v in values.items() if k not in GIVEN_DIRECTLY})
    if epochs is not None:
        settings["epochs"] = epochs
    parser.set_defaults(**config_values(parser, settings, "distill()"))
    if method not in datafree_kd.SYNTHESIZERS:
        raise UsageError(f"unknown method '{method}'; choose one of: {', '.join(sorted(datafree_kd.SYNTHESIZERS))}")
    args = parser.parse_args(["--method", method])
    normalization = check_inputs(teacher, input_shape, mean, std, num_classes, datafree_kd.SYNTHESIZERS[method],
                                 args.bn)
    # compared with the flags' own defaults: a setting for another method is refused, wherever it came from
    datafree_kd.check_args(args, datafree_kd.build_parser(), normalization)
    args.dataset, args.teacher, args.student = "custom", type(teacher).__name__, type(student).__name__

    from datafree import distributed
    from datafree.checkpoint import read_summary
    from datafree.precision import resolve_mode
    from datafree.run import RunData, build_run
    from datafree.tasks import build_task
    from datafree.utils.misc import select_device, set_seed

    device = torch.device(device) if device is not None else select_device(None)
    args.precision = resolve_mode(args.precision, device, datafree_kd.SYNTHESIZERS[method].bf16_in_auto)
    set_seed(args.seed)
    data = RunData(build_task("classification", num_classes), num_classes, tuple(input_shape), normalization)
    teacher, student = teacher.to(device).eval(), student.to(device)
    trainable = [p for p in teacher.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    folder = contextlib.nullcontext(output) if output is not None else tempfile.TemporaryDirectory(prefix="distill-")
    try:
        with folder as run_dir:
            if os.path.exists(os.path.join(run_dir, "last.pth")):
                raise UsageError(f"{run_dir} already holds a run; choose another output folder")
            args.output = run_dir
            run = build_run(args, data, device, teacher=teacher, student=student)
            data.val_loader = evaluation_batches(val_data, args, run.synthesizer, teacher)
            totals = run.execute(distributed.make_logger(run_dir, f"distill-{method}"))
            history = read_summary(run_dir)["history"]
    finally:
        for p in trainable:
            p.requires_grad_(True)
    summary = {"method": method, "epochs": args.epochs, "best_acc1": totals["best_acc1"], "acc1": history[-1]["acc1"],
               "metric": ("top-1 accuracy on val_data" if val_data is not None
                          else "top-1 agreement with the teacher on synthetic batches"),
               "history": history, "synthesis_seconds": totals["synthesis_seconds"], "kd_seconds": totals["kd_seconds"],
               "wall_seconds": totals["wall_seconds"], "output": output}
    return student.eval(), summary


def check_inputs(teacher, input_shape, mean, std, num_classes, synthesizer, bn):
    """The normalisation as a dict, after checking what distill() was given, in one sentence each."""
    if len(tuple(input_shape)) != 3:
        raise UsageError(f"input_shape must be (channels, height, width), not {tuple(input_shape)}")
    channels = input_shape[0]
    if len(mean) != channels or len(std) != channels:
        raise UsageError(f"mean and std need one value per input channel ({channels}); got {len(mean)} and {len(std)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UsageError(f"num_classes must be an int of at least 2, not {num_classes!r}")
    if bn > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules()):
        raise UsageError("the teacher has no BatchNorm2d layer, which the BN-statistics term needs; "
                         "pass bn=0 or a teacher with BatchNorm")
    if synthesizer.reads_teacher_features and "return_features" not in _forward_parameters(teacher):
        raise UsageError(f"method '{synthesizer.method}' reads the teacher's features, so its forward must accept "
                         f"return_features=True and return (logits, features); use fast_meta, fast, deepinv, cmi or ssd")
    return {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)}


def _forward_parameters(module):
    import inspect
    return inspect.signature(module.forward).parameters


class TeacherAgreement:
    """A stand-in for a test set when there is no data: synthetic batches from the run's own
    ``sample()``, labelled with the teacher's top-1, so that accuracy on them is the student's
    agreement with the teacher."""

    def __init__(self, synthesizer, teacher, batches):
        self.synthesizer, self.teacher, self.batches = synthesizer, teacher, batches

    def __iter__(self):
        for _ in range(self.batches):
            with torch.no_grad():
                images = self.synthesizer.sample().images
                yield images, self.teacher(images).argmax(1)


def evaluation_batches(val_data, args, synthesizer, teacher):
    """What each epoch measures the student on: ``val_data`` (a Dataset or a DataLoader), or
    TeacherAgreement over four synthetic batches."""
    if val_data is None:
        return TeacherAgreement(synthesizer, teacher, batches=4)
    if isinstance(val_data, torch.utils.data.DataLoader):
        return val_data
    return torch.utils.data.DataLoader(val_data, batch_size=max(args.batch_size, 256), shuffle=False)
