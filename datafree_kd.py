"""Data-free knowledge distillation (Fast DFKD and its baselines).

Not implemented yet: the synthesizers and this entry script arrive with the next issue.
Until then, train teachers with train_scratch.py and distil with real data with vanilla_kd.py.
"""
import sys


def main():
    print("datafree_kd.py: the data-free methods are not implemented yet; "
          "use train_scratch.py and vanilla_kd.py meanwhile (see README).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
