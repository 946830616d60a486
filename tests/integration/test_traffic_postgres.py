"""The traffic-tools and conversation tests whose SQL differs by backend (a path computed in the
database, keyset paging, blobs, frame payloads searched in place), run again on PostgreSQL:
their SQLite runs are in test_traffic_tools.py and test_conversation_threads.py."""

from __future__ import annotations

import pytest

from tests.integration.test_conversation_threads import (  # noqa: F401 - fixtures and tests run here too
    messages_server,
    test_openai_responses_over_websocket_become_a_conversation,
    test_two_conversations_a_second_apart_stay_two_and_anthropic_is_detected,
    ws_llm,
)
from tests.integration.test_traffic_tools import (  # noqa: F401
    echo,
    test_har_export_streams_every_transaction,
    test_har_import_becomes_replayable_transactions,
    test_list_filters_that_were_ignored,
)


@pytest.fixture
def database_url(pg_cluster) -> str:
    return pg_cluster.fresh_url()
