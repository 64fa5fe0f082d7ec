"""Run a whole paper table and collect it (`datafree-table`): datafree/commands/table.py.

    python scripts/reproduce_table.py configs/tables/digits_mini.yaml
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datafree.commands import table  # noqa: E402

if __name__ == "__main__":
    table.cli()
