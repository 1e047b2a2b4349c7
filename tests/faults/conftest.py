"""The lab's fixtures (tests/lab/conftest.py) serve the fault tests too."""
from tests.lab.conftest import pytest_collection_modifyitems, the_lab, this_checkouts_agent  # noqa: F401
