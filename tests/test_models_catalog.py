"""docs/models.md's parameter table is the one tfseg.models.catalog computes (every tested
model.name x encoder combination built at default widths)."""
import re
from pathlib import Path

import pytest

from tfseg.models.catalog import COMBINATIONS, parameter_table

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


@pytest.mark.slow
def test_docs_parameter_table_is_computed():
    text = DOCS.read_text()
    block = re.search(r"<!-- model-table:start -->\n(.*?)<!-- model-table:end -->", text, re.S)
    assert block, "docs/models.md lacks the model-table markers"
    assert block.group(1) == parameter_table(), "docs/models.md is stale: run python -m tfseg.models.catalog"


def test_catalog_covers_every_architecture_but_the_adapter():
    from tfseg.models import BUILDERS

    assert {name for name, _ in COMBINATIONS} == set(BUILDERS) - {"sm"}
