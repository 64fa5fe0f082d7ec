"""Run logging: text to the console and ``log.txt``, scalars to TensorBoard."""
import logging
import os
import sys


class RunLogger:
    def __init__(self, run_dir, name, tensorboard=True):
        os.makedirs(run_dir, exist_ok=True)
        self.log = logging.getLogger(f"datafree.{name}.{id(self)}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%m/%d %H:%M:%S")
        self._handlers = [logging.StreamHandler(sys.stdout),
                          logging.FileHandler(os.path.join(run_dir, "log.txt"))]
        for handler in self._handlers:
            handler.setFormatter(fmt)
            self.log.addHandler(handler)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run_dir, "tb"))

    def info(self, msg):
        self.log.info(msg)

    def args(self, args):
        for key, value in sorted(vars(args).items()):
            self.info(f"{key}: {value}")

    def scalars(self, values, step, prefix=""):
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(prefix + key, value, step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        for handler in self._handlers:
            self.log.removeHandler(handler)
            handler.close()
