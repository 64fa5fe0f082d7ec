import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A copy of the original release's state-dict manifest (shared/reference), kept in the project.
MANIFEST = os.path.join(ROOT, "tests", "data", "upstream_state_dicts.json")


def load_manifest():
    with open(MANIFEST) as f:
        return json.load(f)["models"]


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run an entry script inside a temporary folder (its checkpoints/ go there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
