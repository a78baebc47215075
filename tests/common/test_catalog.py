"""docs/subjects.md is generated from the catalog and must be current."""

from hyperhive.common import catalog, subjects
from tests.rig import REPO


def test_subjects_doc_is_current():
    current = (REPO / "docs" / "subjects.md").read_text()
    assert current == catalog.render_markdown(), (
        "docs/subjects.md is stale: python -m hyperhive.common.catalog > docs/subjects.md"
    )


def test_every_manager_tool_and_service_is_in_the_catalog():
    listed = {e.subject for e in catalog.CATALOG}
    for tool in subjects.MANAGER_TOOLS:
        assert subjects.manager_tool(tool) in listed
    for part in subjects.SERVICES:
        assert subjects.admin(part, "ping") in listed
